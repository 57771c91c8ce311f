"""Shared fixtures: tiny configs, synthetic class banks, the real Omniglot (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import Config

OMNIGLOT = Path(os.environ.get("FEWSHOT_MANN_TEST_OMNIGLOT",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "omniglot"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never write to the user's cache; the decoded Omniglot is shared by the session."""
    old = os.environ.get("FEWSHOT_MANN_CACHE")
    os.environ["FEWSHOT_MANN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    data = os.environ.pop("FEWSHOT_MANN_DATA", None)  # no data root but what a test gives
    torch.set_num_threads(1)
    yield
    if data is not None:
        os.environ["FEWSHOT_MANN_DATA"] = data
    if old is None:
        os.environ.pop("FEWSHOT_MANN_CACHE", None)
    else:
        os.environ["FEWSHOT_MANN_CACHE"] = old


def real_omniglot() -> Path | None:
    """The real Omniglot zips when present (the source for full-resolution tests), else None."""
    if (OMNIGLOT / "images_background.zip").exists() and (OMNIGLOT / "images_evaluation.zip").exists():
        return OMNIGLOT
    return None


@pytest.fixture
def omniglot_root() -> Path:
    """Tests that need the real zips (other image sizes, the decoder itself) skip without them."""
    if real_omniglot() is None:
        pytest.skip(f"real Omniglot zips not found in {OMNIGLOT} (see ../shared/datasets/README.md); "
                    "set FEWSHOT_MANN_TEST_OMNIGLOT to run this test")
    return OMNIGLOT


@pytest.fixture
def omniglot_source() -> Path | None:
    """A ``load_omniglot`` root: the real zips when present, else None (the embedded copy)."""
    return real_omniglot()


@pytest.fixture
def omniglot_args() -> list[str]:
    """Command-line data arguments for a 20x20 Omniglot run: the real zips when present, else none
    (the embedded copy), so these tests never skip for want of Omniglot."""
    root = real_omniglot()
    return ["--data-root", str(root)] if root else []


def tiny_config(**model) -> Config:
    cfg = Config()
    cfg.data.image_size = 6
    cfg.model.controller_size = 16
    cfg.model.memory_slots = 10
    cfg.model.memory_width = 5
    cfg.model.num_read_heads = 3
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def synthetic_bank(classes: int = 12, per_class: int = 12, size: int = 6, channels: int = 1, seed: int = 0) -> ClassBank:
    """Each class: a fixed random pattern plus per-image noise (uint8)."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(classes):
        base = rng.integers(0, 256, (1, channels, size, size))
        noise = rng.integers(-20, 21, (per_class, channels, size, size))
        groups.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return ClassBank.from_groups(groups, [f"class{i:02d}" for i in range(classes)])
