"""--encoder timm:A+timm:B: several backbones read as one, checked against each member read alone (its own
normalisation and size), split for --finetune like one backbone, and refused in one line where it cannot work."""
import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from fewshot_mann.config import Config, ModelConfig  # noqa: E402
from fewshot_mann.errors import UserError  # noqa: E402
from fewshot_mann.fewshot.finetune import FinetuneSettings, Finetuner, ViewCache, tune_tail  # noqa: E402
from fewshot_mann.models.backbones import Preprocessing, build_backbone, head_block, head_width, preprocessing  # noqa: E402
from fewshot_mann.models.ensemble import Ensemble, staged, with_stages  # noqa: E402
from fewshot_mann.models.features import feature_backbone, run_backbone, weights_id  # noqa: E402
from fewshot_mann.models.stages import stage_features  # noqa: E402

A, B = "timm:test_efficientnet", "timm:test_efficientnet_gn"  # ImageNet mean/std vs 0.5/0.5, both 160 px
ENSEMBLE = f"{A}+{B}"


def _images(n=4, size=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _alone(encoder, images, stages=0):
    """A member read alone: its own backbone, its own normalisation, contiguous format."""
    net = stage_features(build_backbone(encoder, "none")[0], stages)
    return run_backbone(net, images, preprocessing(encoder), progress=False, memory_format=torch.contiguous_format)


def test_ensemble_features_are_each_members_own_features_side_by_side():
    images = _images()
    net, _ = build_backbone(ENSEMBLE, "none")
    got = run_backbone(net, images, preprocessing(ENSEMBLE), progress=False)
    expected = np.concatenate([_unit(_alone(A, images)), _unit(_alone(B, images))], 1) / np.sqrt(2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert head_width(ENSEMBLE) == head_width(A)
    np.testing.assert_allclose(head_block(got, ENSEMBLE), _unit(_alone(A, images)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stages", [1, 2])
def test_ensemble_reads_each_members_block_stages(stages):
    images = _images()
    m = ModelConfig(encoder=ENSEMBLE, encoder_weights="none", feature_stages=stages)
    got = run_backbone(feature_backbone(m), images, preprocessing(ENSEMBLE), progress=False)
    expected = np.concatenate([_alone(A, images, stages), _alone(B, images, stages)], 1) / np.sqrt(2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_member_of_another_size_reads_the_image_resized_to_its_own():
    images = _images()
    a, _ = build_backbone(A, "none")
    b, _ = build_backbone(B, "none")
    small = Preprocessing(96, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    prep = preprocessing(A)
    net = Ensemble([a, b], [prep, small], prep.mean, prep.std)
    got = run_backbone(net, images, prep, progress=False)
    x = torch.from_numpy(images).float() / 255
    x96 = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", antialias=True, align_corners=False)
    with torch.inference_mode():
        fb = b((x96 - 0.5) / 0.5).numpy()
    expected = np.concatenate([_unit(_alone(A, images)), _unit(fb)], 1) / np.sqrt(2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_the_split_ensemble_is_the_frozen_one_and_tunes_every_members_tail():
    images = _images(6)
    ens, _ = build_backbone(ENSEMBLE, "none")
    split = staged(ens, tail_stages=1, feature_stages=1)
    prep = preprocessing(ENSEMBLE)
    frozen = run_backbone(with_stages(ens, 1), images, prep, progress=False)
    np.testing.assert_allclose(run_backbone(split, images, prep, progress=False), frozen, rtol=1e-4, atol=1e-5)
    cache = ViewCache(split, images, prep.mean, prep.std)
    before = [p.clone() for p in split.tail.parameters()]
    tail, _, _ = tune_tail(cache, range(4), [0, 0, 1, 1], 2, FinetuneSettings(steps=2, batch=4, views=2, tail_stages=1))
    tails = list(tail.tails)
    assert len(tails) == 2
    moved = [any(not torch.equal(p, q) for p, q in zip(t.parameters(), before_t))
             for t, before_t in zip(tails, (before[:len(list(tails[0].parameters()))],
                                            before[len(list(tails[0].parameters())):]))]
    assert moved == [True, True]  # both members' tails trained; the frozen split is untouched
    assert all(torch.equal(p, q) for p, q in zip(split.tail.parameters(), before))


def test_finetuning_an_ensemble_checkpoint_with_zero_steps_gives_its_frozen_features():
    images = _images(6)
    m = ModelConfig(encoder=ENSEMBLE, encoder_weights="none", feature_stages=1, embed_precision="fp32")
    sup, qry = Finetuner(m, FinetuneSettings(steps=0), images).tune(range(4), [0, 0, 1, 1], [4, 5], 2)
    frozen = run_backbone(feature_backbone(m), images, preprocessing(ENSEMBLE), progress=False)
    np.testing.assert_allclose(np.concatenate([sup, qry]), frozen, rtol=1e-4, atol=1e-5)


def test_weights_identity_is_the_built_ensembles_digest():
    m = ModelConfig(encoder=ENSEMBLE, encoder_weights="none")
    assert weights_id(m) == build_backbone(ENSEMBLE, "none")[1]
    assert weights_id(ModelConfig(encoder=ENSEMBLE, encoder_weights="w.pt")) is None  # not available: said so


@pytest.mark.parametrize("encoder,weights,stages,message", [
    ("timm:test_efficientnet+fewshot:conv4", "none", 0, "an ensemble joins ImageNet backbones"),
    (f"{A}+{A}", "none", 0, "named twice"),
    (ENSEMBLE, "w.pt", 0, "read their own ImageNet weights"),
    ("timm:test_efficientnet+torchvision:resnet18", "none", 1, "--feature-stages reads the block stages of timm"),
])
def test_an_ensemble_that_cannot_work_is_refused_in_one_line(encoder, weights, stages, message):
    cfg = Config()
    cfg.model.encoder, cfg.model.encoder_weights, cfg.model.feature_stages = encoder, weights, stages
    with pytest.raises(UserError, match=message):
        cfg.validate()
