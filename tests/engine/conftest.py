"""Fixtures of the engine tests: a fake Omniglot with its split file (test_reliability.py, test_distributed.py)."""
from __future__ import annotations

import json

import pytest

from helpers.omniglot import make_fake_omniglot


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    """A fake Omniglot (6 background / 4 evaluation characters) and a split file naming them (3 / 3 / 4)."""
    root = tmp_path_factory.mktemp("omniglot")
    make_fake_omniglot(root, as_zip=False)
    names = sorted("/".join((p.parts[-3].removeprefix("images_"), p.parts[-2], p.parts[-1]))
                   for p in root.glob("images_*/*/*"))
    split = root / "split.json"
    background = [n for n in names if n.startswith("background/")]
    split.write_text(json.dumps({"train": background[:3], "validation": background[3:],
                                 "test": [n for n in names if n.startswith("evaluation/")]}))
    return root, split
