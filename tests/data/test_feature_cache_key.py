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
