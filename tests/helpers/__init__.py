"""Test helpers shared by several test files (not fixtures: those live in conftest.py): tiny
configs, synthetic class banks, fake bank loaders, where the real Omniglot is. Test modules import
these (``from helpers import tiny_config``; pyproject puts tests/ on the path), never each other."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from pathlib import Path

import numpy as np

from fewshot_mann.config import Config
from fewshot_mann.data.bank import ClassBank, SplitBanks

OMNIGLOT = Path(os.environ.get("FEWSHOT_MANN_TEST_OMNIGLOT",
                               Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "omniglot"))


def as_split(load):
    """A fake ``load_banks(cfg, progress)`` -> (train, held-out) as a fake ``load_split_banks``:
    the held-out bank serves as both the validation classes (in-training checks) and the test
    classes (evaluate), as the one held-out bank did before validation classes existed. Synthetic
    banks reuse names (class00, ...), so held-out classes that share a training class's name are
    renamed: they are other classes, and the held-out check compares names."""
    def load_split(cfg, progress=True, recorded=None, *, feature_cache=True, with_pixels=False):
        train, held = load(cfg, progress)
        if set(train.names) & set(held.names):
            held = dataclasses.replace(held, names=[f"held-out/{n}" for n in held.names])
        parts = SplitBanks(train, held, held)
        return (parts, parts) if with_pixels else parts
    return load_split


def patch_banks(monkeypatch, banks) -> None:
    """Every entry point (train, evaluate, kshot, knn) loads these (train, held-out) banks."""
    from fewshot_mann.engine import loading as datasets
    from fewshot_mann.engine import trainer as training

    fake = as_split(lambda cfg, progress=True: banks)
    monkeypatch.setattr(training, "load_split_banks", fake)
    monkeypatch.setattr(datasets, "load_split_banks", fake)


def real_omniglot() -> Path | None:
    """The real Omniglot zips when present (the source for full-resolution tests), else None."""
    if (OMNIGLOT / "images_background.zip").exists() and (OMNIGLOT / "images_evaluation.zip").exists():
        return OMNIGLOT
    return None


def held_out_characters(split: str = "santoro") -> ClassBank:
    """The test characters of an Omniglot ``split`` at 20 x 20, from the embedded copy or the
    real zips; the calling test is skipped where neither is available."""
    import pytest

    from fewshot_mann.data.omniglot import load_omniglot, split_banks
    try:
        from fewshot_mann.data.embedded import available, load_embedded  # the packaged copy, where present
        bank = load_embedded() if available() else None
    except ImportError:
        bank = None
    if bank is None:
        if not (OMNIGLOT / "images_background.zip").exists():
            pytest.skip(f"neither the embedded Omniglot nor the real zips ({OMNIGLOT}) are available")
        bank = load_omniglot(OMNIGLOT, 20, progress=False)
    return split_banks(bank, split)[1]


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


# Two synthetic banks (training, held-out) and the flags of a seconds-long training on them, for CLI tests.
SYNTHETIC_BANKS = (synthetic_bank(classes=10, per_class=12, seed=1), synthetic_bank(classes=6, per_class=12, seed=2))
TINY_TRAIN = ["--episodes", "8", "--image-size", "6", "--controller-size", "16", "--memory-slots", "10", "--memory-width",
              "5", "--read-heads", "3", "--ways", "3", "--instances", "4", "--no-rotations", "--batch-size", "4",
              "--eval-every", "0", "--no-progress", "--threads", "1"]


def one_error_line(capsys) -> str:
    """The one ``error:`` line a command printed on stderr (no traceback, exactly one error)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@contextlib.contextmanager
def fails_if_blocked(message: str, seconds: int = 20):
    """The body fails the test with ``message`` instead of hanging when a read blocks (a FIFO opened, a
    device read to its end) for ``seconds``; the previous alarm handler is restored."""
    import pytest

    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail(message))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
