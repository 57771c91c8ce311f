"""The feature cache never answers for other backbone weights: its key holds the weights' sha256."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm")


def test_other_weights_never_read_the_cached_features(tmp_path, monkeypatch):
    import timm

    from fewshot_mann.config import ModelConfig
    from fewshot_mann.models.features import embed_images

    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"w{seed}.pt"
        torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=0).state_dict(), path)
        paths.append(str(path))
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 160, 160), dtype=np.uint8)
    stats_a, stats_b = {}, {}
    a = embed_images(images, ModelConfig(encoder="timm:test_efficientnet", encoder_weights=paths[0]),
                     progress=False, stats=stats_a)
    b = embed_images(images, ModelConfig(encoder="timm:test_efficientnet", encoder_weights=paths[1]),
                     progress=False, stats=stats_b)
    assert stats_a["computed"] == 3 and stats_b["computed"] == 3
    assert not np.allclose(a, b)


def test_bfloat16_and_float32_features_are_cached_apart_and_auto_follows_the_cpu(tmp_path, monkeypatch):
    """``embed_precision``: bf16 features come from autocast (close to, not equal to, float32 ones), the two
    never answer for each other in the cache, and ``auto`` is bf16 only on a CPU with native bfloat16 and
    only for ImageNet backbones."""
    from fewshot_mann.config import ModelConfig
    from fewshot_mann.models.features import embed_images, embed_precision

    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 160, 160), dtype=np.uint8)
    m = dict(encoder="timm:test_efficientnet", encoder_weights="none")
    feats, stats = {}, {}
    for p in ("fp32", "bf16", "fp32", "bf16"):
        stats[p] = {}
        feats[p] = embed_images(images, ModelConfig(**m, embed_precision=p), progress=False, stats=stats[p])
    assert stats["fp32"]["computed"] == 0 and stats["bf16"]["computed"] == 0  # the second round: both cached
    assert not np.array_equal(feats["fp32"], feats["bf16"])
    cos = (feats["fp32"] * feats["bf16"]).sum(1) / np.linalg.norm(feats["fp32"], axis=1) / np.linalg.norm(feats["bf16"], axis=1)
    assert cos.min() > 0.95
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native, raising=False)
        assert embed_precision(ModelConfig(**m)) == ("bf16" if native else "fp32")
        assert embed_precision(ModelConfig(encoder="fewshot:conv4")) == "fp32"
        assert embed_precision(ModelConfig(**m, embed_precision="fp32")) == "fp32"
