"""Issue 31, cause 2: the folder decode cache is keyed on the very bytes that filled it. A file
changed between the look-up and the decode files that decode under the new content; the old
content (restored) is decoded afresh, never answered from the changed one."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot_mann.data import folder
from helpers import fails_if_blocked


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def picture(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8)).save(path)


def test_a_file_changed_while_the_folder_is_read_never_poisons_the_cache(tmp_path, cache, monkeypatch):
    root = tmp_path / "data"
    for c in range(2):
        for i in range(3):
            picture(root / f"class{c}" / f"{i}.png", 10 * c + i)
    a, b = root / "class0" / "0.png", root / "class1" / "0.png"
    original = b.read_bytes()
    real = folder._decode_classes

    def changed_meanwhile(*args, **kwargs):  # after the look-up hashed every file, before the decode reads them
        b.write_bytes(a.read_bytes())
        return real(*args, **kwargs)
    monkeypatch.setattr(folder, "_decode_classes", changed_meanwhile)
    during = folder.load_folder(root, image_size=8, progress=False)
    assert any(p.kind == "duplicate" for p in during.problems)  # what the folder held when decoded
    monkeypatch.setattr(folder, "_decode_classes", real)
    b.write_bytes(original)  # the files differ again
    after = folder.load_folder(root, image_size=8, progress=False)
    assert not any(p.kind == "duplicate" for p in after.problems)
    assert after.bank.counts.tolist() == [3, 3]
    again = folder.load_folder(root, image_size=8, progress=False)  # and that decode is cached
    assert again.from_cache and again.bank.counts.tolist() == [3, 3]


def _replace(path: Path, how: str) -> None:
    """Make the decode cache file ``path`` one a hostile or damaged cache folder could hold."""
    z = dict(np.load(path))
    meta = json.loads(str(z["meta"]))
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)
        return
    if how == "compressed":  # the members the cache writes, deflated (a zip bomb's form)
        with open(path, "wb") as f:
            np.savez_compressed(f, **z)
        return
    changes = {"wrong shape": {"images": np.zeros((len(z["images"]), 1, 5, 5), np.uint8)},
               "float pixels": {"images": np.full(z["images"].shape, np.nan, np.float32)},
               "names not of this folder": {"meta": np.array(json.dumps({**meta, "names": ["x\ny", *meta["names"][1:]]}))},
               "negative count": {"counts": z["counts"] * np.array([-1, 3])},
               "statistics of the wrong type": {"meta": np.array(json.dumps({**meta, "stats": {"class0": [1]}}))}}[how]
    with open(path, "wb") as f:
        np.savez(f, **{**z, **changes})


@pytest.mark.parametrize("how", ["fifo", "compressed", "wrong shape", "float pixels", "names not of this folder",
                                 "negative count", "statistics of the wrong type"])
def test_a_decode_cache_not_as_the_cache_writes_it_is_decoded_again(tmp_path, cache, how):
    """Cause 1 on the decode cache: a file at the cache's name is answered only if it holds what the
    cache writes for this reader and these classes; anything else (a FIFO never opened) is decoded again."""
    root = tmp_path / "data"
    for c in range(2):
        for i in range(3):
            picture(root / f"class{c}" / f"{i}.png", 10 * c + i)
    fresh = folder.load_folder(root, image_size=8, progress=False)
    [path] = cache.glob("folder-*.npz")
    _replace(path, how)
    with fails_if_blocked("the cache file was opened and blocked"):
        again = folder.load_folder(root, image_size=8, progress=False)
    assert not again.from_cache and again.bank.names == fresh.bank.names and again.stats == fresh.stats
    assert again.bank.images.dtype == np.uint8 and np.array_equal(again.bank.images, fresh.bank.images)
