"""The folder decode cache: a folder's decoded images, so a re-run reads the files but decodes nothing.

One file under ``omniglot.cache_dir()`` per (folder, reader, content), keyed by the folder's
image file list with the SHA-256 of every file's bytes (not sizes and times, which can stay
the same while pixels or classes change) plus the reader's ``cache_key()``; a changed folder
is decoded again and the stale cache file of the same folder and reader is removed. A failure
that says nothing about the file (out of memory, an I/O error) is never cached
(``folder.load_folder`` decides). The cache holds images derived from the user's files:
``--no-feature-cache`` neither reads nor writes it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fewshot_mann.data import cache_files
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.images import MAX_FILE_BYTES, ImageReader
from fewshot_mann.data.omniglot import cache_dir
from fewshot_mann.data.scan import Problem, relative
from fewshot_mann.fileio import InputError, read_regular_file

CACHE_VERSION = 3  # 3: keyed on file contents


def _stat_stamp(f: Path) -> str:
    """The key of a file whose content could not be read: its size, times and inode."""
    try:
        st = f.stat()
        return f"unread:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    except OSError:
        return "missing"


def cache_path(root: Path, classes: dict[str, list[Path]], reader: ImageReader,
               stamps: dict | None = None) -> tuple[Path, str]:
    """(cache file, prefix shared by every cache of this folder and reader).

    The key holds every file's class, path and SHA-256 of its bytes: sizes and times can stay
    the same while pixels change (fixed-size BMP/PGM/TIFF re-created with the same times) or
    files move between classes (``mv`` keeps both), so only the content is trusted.
    ``stamps`` (path -> SHA-256 or None): the digests of the reads that were decoded, so a
    cache is keyed on the very bytes that filled it (a file changed between the look-up and
    the decode files the result under the new content, never under the old)."""
    settings = json.dumps([CACHE_VERSION, str(root)] + reader.cache_key())
    listing = hashlib.sha256()
    for name, files in classes.items():
        for f in files:
            if stamps is not None:
                stamp = stamps.get(f) or _stat_stamp(f)
            else:
                try:
                    stamp = hashlib.sha256(read_regular_file(f, MAX_FILE_BYTES, "image")).hexdigest()
                except (InputError, OSError, MemoryError):  # unreadable now: its problem is found when decoding
                    stamp = _stat_stamp(f)
            listing.update(f"{name}\0{relative(f, root)}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    prefix = "folder-" + hashlib.sha256(settings.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return cache_dir() / f"{prefix}-{listing.hexdigest()[:16]}.npz", prefix


def load(path: Path):
    """(bank, digests, problems, stats) from the cache file ``path``; None where it is absent, damaged or foreign."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            images, counts, digests = z["images"], z["counts"].astype(np.int64), z["digests"]
        names = meta["names"]
        if len(names) != len(counts) or int(counts.sum()) != len(images) or len(images) != len(digests):
            return None
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        problems = [Problem(**p) for p in meta["problems"]]
        return ClassBank(images, offsets, counts, names), digests, problems, meta["stats"]
    except Exception:  # noqa: BLE001 - a damaged or foreign cache is rebuilt
        return None


def save(path: Path, prefix: str, bank: ClassBank, digests, problems, stats) -> None:
    meta = json.dumps({"names": bank.names, "problems": [asdict(p) for p in problems], "stats": stats})

    def write(f):
        np.savez(f, images=bank.images, counts=bank.counts, digests=np.asarray(digests, dtype="<U64"),
                 meta=np.array(meta))
    if not cache_files.write(path, write):
        return  # a read-only cache only costs the decode next time
    for old in path.parent.glob(f"{prefix}-*.npz"):  # the folder changed: drop the stale decode (only the cache's own)
        if old != path and cache_files.is_owned(old):
            old.unlink(missing_ok=True)
