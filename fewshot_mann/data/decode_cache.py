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


MAX_META_BYTES = 2**28  # the JSON of names, problems and statistics (a few hundred bytes a skipped file)


def load(path: Path, reader: ImageReader, classes: dict[str, list[Path]]):
    """(bank, digests, problems, stats) from the cache file ``path``; None where it is absent,
    damaged or foreign: only a file the caches own (``cache_files.read``) holding what this
    reader makes of these classes (uint8 images of its shape, at most one an image file, counts,
    digests, names of these classes, well-formed problems and statistics) is answered."""
    shape = (reader.channels, reader.image_size, reader.image_size)
    most = sum(len(files) for files in classes.values())

    def expect(h):
        (di, si), (dc, sc), (dd, sd), (dm, sm) = h["images"], h["counts"], h["digests"], h["meta"]
        return (di == np.uint8 and len(si) == 4 and si[1:] == shape and si[0] <= most and dc.kind in "iu"
                and len(sc) == 1 and sc[0] <= len(classes) and dd == np.dtype("<U64") and sd == si[:1]
                and dm.kind == "U" and sm == () and dm.itemsize <= MAX_META_BYTES)
    z = cache_files.read(path, expect)
    if z is None:
        return None
    images, counts, digests = z["images"], z["counts"].astype(np.int64), z["digests"]
    try:
        meta = json.loads(str(z["meta"]))
        names, problems, stats = meta["names"], [Problem(**p) for p in meta["problems"]], meta["stats"]
    except Exception:  # noqa: BLE001 - a damaged or foreign cache is rebuilt
        return None
    if not (_well_formed(names, problems, stats, classes) and len(names) == len(counts)
            and (counts > 0).all() and int(counts.sum()) == len(images)):
        return None
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ClassBank(images, offsets, counts, names), digests, problems, stats


def _well_formed(names, problems: list[Problem], stats, classes: dict) -> bool:
    """Names: distinct classes of this folder; problems: text fields; statistics: per class, two
    sizes of two whole numbers and lists of text (what ``inspect`` prints)."""
    def texts(v) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    def size(v) -> bool:
        return isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v)
    return (texts(names) and len(set(names)) == len(names) and all(n in classes for n in names)
            and all(isinstance(x, str) for p in problems for x in (p.kind, p.path, p.message))
            and isinstance(stats, dict) and all(
                n in classes and isinstance(s, dict) and set(s) == {"size_min", "size_max", "modes", "formats"}
                and size(s["size_min"]) and size(s["size_max"]) and texts(s["modes"]) and texts(s["formats"])
                for n, s in stats.items()))


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
