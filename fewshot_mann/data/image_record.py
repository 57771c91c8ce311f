"""Which images a checkpoint trained on, in a record that scales with the data.

A checkpoint of a folder dataset records its training images (never the images or file names)
so that evaluation can refuse to call a trained image held out. It was one SHA-256 string per
image (``ckpt["train_digests"]``): 200,000 images reached the checkpoint loader's bound on
nested values, and the finished run could not be read back. The record now
(``ckpt["train_images"]``) is three values whatever the number of images:

- ``count``: how many distinct training images;
- ``sha256``: the SHA-256 of the sorted image digests joined by newlines (which set it was);
- ``prefixes``: one int64 tensor, sorted, of the first 64 bits of each image digest, for the
  held-out check (8 bytes an image: a million images are 8 MB; the chance that an image not
  trained on shares a 64-bit prefix with one of a million that were is below 1e-13).

Checkpoints with the old list stay loadable and checked as before (``seen_count``).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

KEY = "train_images"
LEGACY_KEY = "train_digests"


def _prefixes(digests) -> np.ndarray:
    """The first 64 bits of each hex digest as int64 (same order)."""
    return np.array([int(d[:16], 16) for d in digests], dtype=np.uint64).view(np.int64)


def compact(digests) -> dict:
    """The record of the training images whose SHA-256 hex digests are ``digests``."""
    unique = sorted(set(digests))
    return {"count": len(unique),
            "sha256": hashlib.sha256("\n".join(unique).encode()).hexdigest(),
            "prefixes": torch.from_numpy(np.sort(_prefixes(unique)))}


def problem(record) -> str | None:
    """Why ``record`` (a checkpoint's ``train_images``) is not a valid record, or None."""
    if not isinstance(record, dict) or set(record) != {"count", "sha256", "prefixes"}:
        return "train_images is not a record of count, sha256 and prefixes"
    count, digest, prefixes = record["count"], record["sha256"], record["prefixes"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return "train_images.count is not a count"
    if not isinstance(digest, str) or len(digest) != 64:
        return "train_images.sha256 is not a SHA-256"
    if not isinstance(prefixes, torch.Tensor) or prefixes.dtype != torch.int64 or prefixes.dim() != 1 \
            or len(prefixes) != count:
        return "train_images.prefixes is not one int64 value per image"
    return None


def seen_count(ckpt: dict, digests) -> int:
    """How many of ``digests`` (SHA-256 hex of scored images) the checkpoint trained on; 0
    without a record."""
    digests = [d for d in digests if isinstance(d, str) and len(d) >= 16]
    record = ckpt.get(KEY)
    if isinstance(record, dict) and problem(record) is None:
        known = np.sort(record["prefixes"].numpy())  # sorted when written; a hand-made record may not be
        if not len(known) or not digests:
            return 0
        wanted = _prefixes(digests)
        at = np.clip(np.searchsorted(known, wanted), 0, len(known) - 1)
        return int((known[at] == wanted).sum())
    legacy = ckpt.get(LEGACY_KEY)
    if isinstance(legacy, list):
        seen = set(legacy)
        return sum(1 for d in digests if d in seen)
    return 0
