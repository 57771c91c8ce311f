"""--feature-stages: the head's features joined with pooled block-stage outputs, checked against a literal
reading of the backbone (forward hooks on its stages), and kept apart in the feature cache."""
import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from fewshot_mann.config import Config, ModelConfig  # noqa: E402
from fewshot_mann.errors import UserError  # noqa: E402
from fewshot_mann.models.backbones import build_backbone, preprocessing  # noqa: E402
from fewshot_mann.models.features import embed_images, run_backbone  # noqa: E402
from fewshot_mann.models.backbones import head_block, head_width  # noqa: E402
from fewshot_mann.models.stages import join, stage_features  # noqa: E402

ENCODER = "timm:test_efficientnet"


def _images(n=5, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("stages", [1, 2])
def test_joined_features_are_the_head_and_the_last_stages_pooled(stages):
    images = _images()
    prep = preprocessing(ENCODER)
    net, _ = build_backbone(ENCODER, "none")
    pooled = {}
    for back in range(1, stages + 1):
        net.blocks[len(net.blocks) - back].register_forward_hook(
            lambda m, i, o, k=back: pooled.__setitem__(k, o.float().mean((2, 3)).numpy()))
    head = run_backbone(net, images, prep, progress=False, memory_format=torch.contiguous_format)
    expected = np.concatenate([_unit(head)] + [_unit(pooled[k]) for k in range(1, stages + 1)], 1) / np.sqrt(stages + 1)
    got = run_backbone(stage_features(build_backbone(ENCODER, "none")[0], stages), images, prep, progress=False,
                       memory_format=torch.contiguous_format)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    assert head_width(ENCODER) == head.shape[1]
    np.testing.assert_allclose(head_block(got, ENCODER), _unit(head), rtol=1e-5, atol=1e-6)


def test_join_scales_each_block_then_the_whole_to_unit_length():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0, 2.0]])
    np.testing.assert_allclose(join([a, b]).numpy(), [[0.6 / 2**0.5, 0.8 / 2**0.5, 0, 0, 1 / 2**0.5]], rtol=1e-6)


def test_the_feature_cache_keeps_head_only_and_joined_features_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path))
    images = _images(3, size=preprocessing(ENCODER).image_size)
    plain = ModelConfig(model="keyed", encoder=ENCODER, encoder_weights="none", embed_precision="fp32")
    joined = ModelConfig(model="keyed", encoder=ENCODER, encoder_weights="none", embed_precision="fp32",
                         feature_stages=1)
    a = embed_images(images, plain, progress=False)
    b = embed_images(images, joined, progress=False)
    assert b.shape[1] > a.shape[1]
    assert len(list((tmp_path / "features").glob("features-*.npz"))) == 2  # one file each: neither evicts the other
    np.testing.assert_array_equal(embed_images(images, plain, progress=False), a)  # from the cache: the same
    np.testing.assert_array_equal(embed_images(images, joined, progress=False), b)


def test_feature_stages_need_a_timm_backbone():
    cfg = Config()
    cfg.model.encoder, cfg.model.feature_stages = "torchvision:resnet18", 1
    with pytest.raises(UserError, match="--feature-stages reads the block stages of timm backbones"):
        cfg.validate()
