"""Fine-tuning a backbone's tail to one support set (fewshot/finetune.py), on timm's tiny test network."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from fewshot_mann.models.features import run_backbone  # noqa: E402
from fewshot_mann.models.stages import StagedBackbone  # noqa: E402
from fewshot_mann.fewshot.finetune import (FinetuneSettings, ViewCache, augment,  # noqa: E402
                                           finetune_features)
from fewshot_mann.models.backbones import build_backbone, preprocessing  # noqa: E402

ENCODER = "timm:test_efficientnet"


def _images(n=8, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _cache(images, tail_stages=1, seed=0):
    backbone, _ = build_backbone(ENCODER, "none")
    prep = preprocessing(ENCODER)
    return ViewCache(StagedBackbone(backbone, tail_stages), images, prep.mean, prep.std, seed=seed), backbone, prep


def test_zero_steps_give_the_frozen_backbones_features():
    images = _images()
    cache, backbone, prep = _cache(images)
    sup, qry, _ = finetune_features(cache, [0, 1, 2, 3], [0, 0, 1, 1], [4, 5, 6, 7], 2, FinetuneSettings(steps=0))
    frozen = run_backbone(backbone, images, prep, progress=False)
    np.testing.assert_allclose(sup.numpy(), frozen[:4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(qry.numpy(), frozen[4:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tail_stages,feature_stages", [(0, 1), (1, 1), (1, 2)])
def test_zero_steps_give_the_frozen_features_read_at_block_stages(tail_stages, feature_stages):
    """With ``--feature-stages``, the tail split anywhere reads what the frozen embedding reads."""
    from fewshot_mann.config import ModelConfig
    from fewshot_mann.models.features import feature_backbone

    images = _images()
    backbone, _ = build_backbone(ENCODER, "none")
    prep = preprocessing(ENCODER)
    cache = ViewCache(StagedBackbone(backbone, tail_stages, feature_stages), images, prep.mean, prep.std)
    sup, qry, _ = finetune_features(cache, [0, 1, 2, 3], [0, 0, 1, 1], [4, 5, 6, 7], 2, FinetuneSettings(steps=0))
    m = ModelConfig(model="keyed", encoder=ENCODER, encoder_weights="none", embed_precision="fp32",
                    feature_stages=feature_stages)
    frozen = run_backbone(feature_backbone(m), images, prep, progress=False)  # what embed_images runs
    assert frozen.shape[1] > run_backbone(backbone, images[:1], prep, progress=False).shape[1]
    np.testing.assert_allclose(sup.numpy(), frozen[:4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(qry.numpy(), frozen[4:], rtol=1e-4, atol=1e-5)


def test_feature_stages_beyond_the_tuned_tail_are_refused_in_one_line():
    from fewshot_mann.errors import UserError
    backbone, _ = build_backbone(ENCODER, "none")
    with pytest.raises(UserError, match="at most 2 stage"):
        StagedBackbone(backbone, 1, 3)


def test_the_queries_never_change_what_is_learned():
    images = _images(10)
    cache, _, _ = _cache(images)
    s = FinetuneSettings(steps=4, batch=6)
    sup_a, qry_a, _ = finetune_features(cache, [0, 1, 2, 3], [0, 0, 1, 1], [4, 5, 6], 2, s, seed=3)
    sup_b, qry_b, _ = finetune_features(cache, [0, 1, 2, 3], [0, 0, 1, 1], [8, 9, 4], 2, s, seed=3)
    assert torch.equal(sup_a, sup_b)  # the tuned tail does not depend on which queries follow
    assert torch.equal(qry_a[0], qry_b[2])  # and query 4 reads the same through it
    sup_c, _, _ = finetune_features(cache, [0, 1, 2, 3], [0, 0, 1, 1], [4], 2, FinetuneSettings(steps=0))
    assert not torch.allclose(sup_a, sup_c)  # and something was learned


def test_finetuning_fits_the_support_set():
    """After fine-tuning on the support images themselves (one view: no augmentation), the tuned classifier
    fits them better than the class means it starts from."""
    images = _images(12, seed=5)
    labels = np.repeat(np.arange(3), 4)
    cache, _, _ = _cache(images)
    rows = list(range(12))

    def loss(steps):
        _, _, logits = finetune_features(cache, rows, labels, rows, 3, FinetuneSettings(steps=steps, views=1, batch=12),
                                         seed=1)
        return torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)).item()

    assert loss(30) < 0.5 * loss(0)


def test_views_are_a_function_of_seed_row_and_view_only():
    images = _images(4)
    a, _, _ = _cache(images, seed=7)
    b, _, _ = _cache(images, seed=7)
    first = a.maps([2, 0], [2, 1])
    b.maps([1], [1, 2])  # other work first: the draws do not depend on what was asked before
    assert torch.equal(first, b.maps([2, 0], [2, 1]))
    assert not torch.equal(a.maps([0], [0]), a.maps([0], [1]))  # an augmented view is not the image
    c, _, _ = _cache(images, seed=8)
    assert not torch.equal(a.maps([0], [1]), c.maps([0], [1]))


def test_augment_keeps_size_and_type_and_depends_on_the_generator():
    x = torch.from_numpy(_images(1, size=40)[0])
    one = augment(x, torch.Generator().manual_seed(0))
    assert one.shape == x.shape and one.dtype == torch.uint8
    assert torch.equal(one, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(one, augment(x, torch.Generator().manual_seed(1)))


def test_a_backbone_without_stages_is_refused_in_one_line():
    from fewshot_mann.errors import UserError
    with pytest.raises(UserError, match="--finetune and --feature-stages need a timm backbone with stages"):
        StagedBackbone(torch.nn.Linear(3, 3))


def test_tuning_once_then_reading_later_images_equals_tuning_with_the_queries():
    """``Finetuner.tune_support`` (the web app: tune on the support set, answer cases later) gives exactly what
    ``tune`` gives with the queries among its images, and tells its progress step by step."""
    from fewshot_mann.config import ModelConfig
    from fewshot_mann.fewshot.finetune import Finetuner

    images = _images(9)
    model_cfg = ModelConfig(encoder=ENCODER, encoder_weights="none")
    s = FinetuneSettings(steps=3, batch=6, tail_stages=1)
    sup_a, qry_a = Finetuner(model_cfg, s, images, seed=2).tune(range(5), [0, 0, 1, 1, 1], range(5, 9), 2, seed=[2])
    steps = []
    sup_b, features = Finetuner(model_cfg, s, images[:5], seed=2).tune_support(
        range(5), [0, 0, 1, 1, 1], 2, seed=[2], progress=lambda done, total: steps.append((done, total)))
    assert np.array_equal(sup_a, sup_b) and np.array_equal(qry_a, features(images[5:]))
    assert steps == [(1, 3), (2, 3), (3, 3)] and features(images[:0]).shape == (0, sup_b.shape[1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_finetuner_takes_the_checkpoints_embedding_precision(precision):
    """``--embed-precision`` (auto: bf16 where the CPU has it) decides once how the stem's views are computed and
    the tail's training steps run; the features read after stay float32, and bf16 tunes to nearly the same."""
    from fewshot_mann.config import ModelConfig
    from fewshot_mann.fewshot.finetune import Finetuner

    images = _images(9)
    s = FinetuneSettings(steps=3, batch=6, tail_stages=1)
    tuner = Finetuner(ModelConfig(encoder=ENCODER, encoder_weights="none", embed_precision=precision), s, images,
                      seed=2)
    assert tuner.settings.bf16 == tuner.cache.bf16 == (precision == "bf16")
    sup, qry = tuner.tune(range(5), [0, 0, 1, 1, 1], range(5, 9), 2, seed=[2])
    assert sup.dtype == qry.dtype == np.float32
    ref_sup, ref_qry = Finetuner(ModelConfig(encoder=ENCODER, encoder_weights="none", embed_precision="fp32"), s,
                                 images, seed=2).tune(range(5), [0, 0, 1, 1, 1], range(5, 9), 2, seed=[2])
    cosine = (qry * ref_qry).sum(1) / np.linalg.norm(qry, axis=1) / np.linalg.norm(ref_qry, axis=1)
    assert cosine.min() > 0.99  # the same directions (measured: 0.9993 or more)
    assert np.array_equal(qry, ref_qry) == (precision == "fp32")


def test_bf16_training_steps_run_in_bfloat16():
    """The bf16 setting is not a no-op: the tail's training forward sees bfloat16 inside its convolutions."""
    images = _images(6)
    cache, _, _ = _cache(images)
    seen = []
    hook = cache.staged.tail.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    from fewshot_mann.fewshot.finetune import tune_tail
    tune_tail(cache, [0, 1, 2, 3], [0, 0, 1, 1], 2, FinetuneSettings(steps=1, batch=4, bf16=True))
    tune_tail(cache, [0, 1, 2, 3], [0, 0, 1, 1], 2, FinetuneSettings(steps=1, batch=4, bf16=False))
    hook.remove()
    # each call: the initial clean forward (float32), then one training step
    assert seen == [torch.float32, torch.bfloat16, torch.float32, torch.float32]
