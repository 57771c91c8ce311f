"""Test helpers shared by several test files (not fixtures: those live in conftest.py)."""
from __future__ import annotations

import dataclasses

from fewshot_mann.data.bank import SplitBanks


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
    from fewshot_mann.data import loading as datasets
    from fewshot_mann.engine import trainer as training

    fake = as_split(lambda cfg, progress=True: banks)
    monkeypatch.setattr(training, "load_split_banks", fake)
    monkeypatch.setattr(datasets, "load_split_banks", fake)
