"""The embedded Omniglot: all 32,460 images at the paper's 20 x 20, shipped inside the package.

With no ``--data-root``, no ``FEWSHOT_MANN_DATA`` and no downloaded copy, Omniglot at 20 x 20
comes from here, so training and evaluation work offline on a fresh machine. The array is
exactly what ``omniglot.load_omniglot`` decodes from the official zips at 20 px (strokes
bright on black, BOX-downsampled from 105 x 105; the test suite checks it equals the decode
of the real zips when they are present). Other sizes need the original images.

Files (package data, ``fewshot_mann/assets/``):
- ``omniglot-20px.npy.xz``: an ``.npy`` of uint8, shape (32460, 1, 20, 20), xz-compressed
  (1.8 MB; 13 MB as an array);
- ``omniglot-20px.json``: character names (``background|evaluation/<Alphabet>/<characterNN>``),
  images per character (20 each, in file-name order), the sha256 of the array's bytes and how
  it was made;
- ``LICENSE.omniglot``: the dataset's MIT licence (Brenden Lake, 2015).
``data/prepare_omniglot.py`` rebuilds both files from the official zips, checking their md5s.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
from pathlib import Path

import numpy as np

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.errors import DataError
from fewshot_mann.fileio import atomic_write

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ARRAY = ASSETS / "omniglot-20px.npy.xz"
META = ASSETS / "omniglot-20px.json"
IMAGE_SIZE = 20
# the decompressed array is 12,984,000 bytes; anything far larger is not this file
MAX_ARRAY_BYTES = 16 << 20

_BANK: ClassBank | None = None  # decoded once per process; read-only after that


def available() -> bool:
    return ARRAY.is_file() and META.is_file()


def load_embedded() -> ClassBank:
    """All 1,623 characters at 20 x 20 as a ``ClassBank`` (images: (32460, 1, 20, 20) uint8)."""
    global _BANK
    if _BANK is not None:
        return _BANK
    if not available():
        raise DataError(f"the embedded Omniglot is missing from this installation ({ARRAY}); "
                        "reinstall fewshot-mann, or give --data-root / --download")
    try:
        meta = json.loads(META.read_text())
        with lzma.open(ARRAY) as f:
            raw = f.read(MAX_ARRAY_BYTES + 1)
    except (OSError, ValueError, lzma.LZMAError) as exc:
        raise DataError(f"the embedded Omniglot in {ASSETS} is damaged ({exc}); reinstall fewshot-mann") from exc
    if len(raw) > MAX_ARRAY_BYTES or hashlib.sha256(raw).hexdigest() != meta.get("sha256_npy"):
        raise DataError(f"the embedded Omniglot in {ASSETS} fails its checksum; reinstall fewshot-mann")
    images = np.load(io.BytesIO(raw), allow_pickle=False)
    names, counts = list(meta["names"]), np.asarray(meta["counts"], dtype=np.int64)
    if images.shape != (int(counts.sum()), 1, IMAGE_SIZE, IMAGE_SIZE) or len(names) != len(counts):
        raise DataError(f"the embedded Omniglot in {ASSETS} has an unexpected shape {images.shape}; "
                        "reinstall fewshot-mann")
    images.setflags(write=False)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    _BANK = ClassBank(images, offsets, counts, names)
    return _BANK


def write_embedded(bank: ClassBank, provenance: dict, assets: Path = ASSETS) -> dict:
    """Write ``bank`` (20 x 20, uint8) as the embedded array and its metadata; returns the metadata."""
    if bank.images.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE) or bank.images.dtype != np.uint8:
        raise ValueError(f"expected (n, 1, 20, 20) uint8 images, got {bank.images.shape} {bank.images.dtype}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(bank.images), allow_pickle=False)
    raw = buf.getvalue()
    meta = {
        "description": "Omniglot (Lake et al. 2015), all 1,623 characters x 20 drawers at 20 x 20 px, "
                       "uint8, strokes bright (255) on black, PIL BOX downsampling from 105 x 105",
        "licence": "MIT (LICENSE.omniglot)",
        "shape": list(bank.images.shape),
        "sha256_npy": hashlib.sha256(raw).hexdigest(),
        **provenance,
        "names": list(bank.names),
        "counts": [int(c) for c in bank.counts],
    }
    packed = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    atomic_write(assets / ARRAY.name, lambda f: f.write(packed))
    atomic_write(assets / META.name, lambda f: f.write((json.dumps(meta, indent=1) + "\n").encode()))
    return meta
