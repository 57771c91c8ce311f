"""The files the caches own, and nothing else: what they write, where, and what ``clear`` removes.

Where: ``omniglot.cache_dir()`` (``$FEWSHOT_MANN_CACHE``, else ``$XDG_CACHE_HOME/fewshot-mann``,
else ``~/.cache/fewshot-mann``). What (``OWNED``):

- ``omniglot-<N>px-<16 hex>.npz``: decoded Omniglot (``omniglot.load_omniglot``);
- ``folder-<12 hex>-<16 hex>.npz``: decoded image folders (``folder.load_folder``);
- ``features/features-<20 hex>.npz``: backbone features (``features.embed_images``);
- ``.<one of those names>.<random>.tmp``: the temporary file of a write in progress (renamed
  over the name when whole).

A file is the caches' own only if all of these hold: its name has one of those forms exactly,
it is a regular file and not a link, it sits in the cache folder itself or in a real (not
linked) ``features`` folder in it, and, for an ``.npz``, its zip members are exactly the ones
that cache writes. Anything else there (a user's ``features/my_embeddings.npz``, a
``folder-scans.npz``, the downloaded datasets in ``data/``) is never listed, read as a cache,
or removed. A temporary file is removed (by ``clear``, and before every cache write) only when
no process is writing it: writers hold an ``flock`` on it until the rename, which the kernel
drops when a writer dies in any way (``kill -9`` included), so an abandoned one is known
for certain and a live one is never touched.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fewshot_mann.errors import UserError
from fewshot_mann.fileio import atomic_write, read_npz, remove_abandoned_temporaries, temporary_is_abandoned
from fewshot_mann.data.omniglot import cache_dir

FEATURES = "features"  # the sub-folder of the feature caches
# kind, sub-folder ("" = the cache folder), exact name, zip members written
OWNED = (
    ("images", "", re.compile(r"omniglot-\d{1,5}px-[0-9a-f]{16}\.npz"), {"images.npy", "counts.npy", "names.npy"}),
    ("images", "", re.compile(r"folder-[0-9a-f]{12}-[0-9a-f]{16}\.npz"),
     {"images.npy", "counts.npy", "digests.npy", "meta.npy"}),
    ("features", FEATURES, re.compile(r"features-[0-9a-f]{20}\.npz"), {"digests.npy", "features.npy", "meta.npy"}),
)
TEMPORARY = re.compile(r"\.(?P<name>[^/]+)\.[A-Za-z0-9_]{1,32}\.tmp")


@dataclass(frozen=True)
class CacheFile:
    kind: str  # images | features | partial (an abandoned temporary file of either)
    path: Path
    size: int


def _real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def folders() -> list[tuple[str, Path]]:
    """(sub-folder name, path) of the folders that can hold cache files: the cache folder and its
    ``features`` folder when that is a real folder (a link to elsewhere is not the cache's)."""
    root = cache_dir()
    out = [("", root)]
    if _real_folder(root / FEATURES):
        out.append((FEATURES, root / FEATURES))
    return out


def _regular_size(path: Path) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def kind_of(sub: str, name: str) -> str | None:
    """The kind of cache whose files are named ``name`` in sub-folder ``sub``, or None."""
    for kind, folder, pattern, _ in OWNED:
        if folder == sub and pattern.fullmatch(name):
            return kind
    return None


def has_members(path: Path, sub: str, name: str) -> bool:
    """Whether the zip at ``path`` holds exactly the members its cache writes (read without
    following a link; a damaged or foreign file is not the cache's)."""
    members = next(m for _, folder, pattern, m in OWNED if folder == sub and pattern.fullmatch(name))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return False
            with zipfile.ZipFile(f) as z:
                return set(z.namelist()) == members
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
        return False


def read(path: Path, expect: Callable[[dict[str, tuple[np.dtype, tuple]]], bool]) -> dict[str, np.ndarray] | None:
    """The arrays of the cache file ``path`` where it has a cache's name and place and holds
    exactly the members that cache writes, as it writes them, and ``expect`` accepts every
    member's (dtype, shape) (``fileio.read_npz``: headers first, no link, FIFO or device, stored
    members only); None otherwise."""
    path = Path(path)
    sub = next((name for name, folder in folders() if path.parent == folder), None)
    if sub is None or kind_of(sub, path.name) is None:
        return None
    members = next(m for _, folder, pattern, m in OWNED if folder == sub and pattern.fullmatch(path.name))
    return read_npz(path, members, expect)


def is_owned(path: Path) -> bool:
    """Whether ``path`` is a cache file (see the module docstring); temporary files excluded."""
    path = Path(path)
    for sub, folder in folders():
        if path.parent == folder:
            kind = kind_of(sub, path.name)
            return kind is not None and _regular_size(path) is not None and has_members(path, sub, path.name)
    return False


def entries(*, partial: bool = True) -> list[CacheFile]:
    """Every cache file; with ``partial`` also the abandoned temporary files (kind ``partial``)."""
    rows = []
    for sub, folder in folders():
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = folder / name
            size = _regular_size(path)
            if size is None:
                continue
            kind = kind_of(sub, name)
            if kind is not None:
                if has_members(path, sub, name):
                    rows.append(CacheFile(kind, path, size))
                continue
            temp = TEMPORARY.fullmatch(name)
            if partial and temp and kind_of(sub, temp["name"]) and temporary_is_abandoned(path):
                rows.append(CacheFile("partial", path, size))
    return rows


def remove_abandoned(folder: Path) -> int:
    """Remove the temporary files of cache writes that died halfway in ``folder``; returns how many."""
    sub = next((name for name, path in folders() if path == folder), None)
    if sub is None:
        return 0
    return remove_abandoned_temporaries(folder, lambda name: kind_of(sub, name) is not None)


def clear(features_only: bool = False) -> int:
    """Remove the cache files (``entries``, abandoned temporary files included; with
    ``features_only`` only those in the features folder); returns how many."""
    removed = 0
    for row in entries(partial=True):
        if features_only and row.path.parent.name != FEATURES:
            continue
        try:
            os.unlink(row.path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UserError(f"cannot remove {row.path}: {exc.strerror or exc}") from exc
    return removed


def write(path: Path, fill: Callable) -> bool:
    """Write the cache file ``path`` atomically (its temporary file locked while written), after
    removing abandoned temporary files beside it. False (and nothing written) where the cache
    folder cannot take it: read-only, or a ``features`` folder that is a link."""
    path = Path(path)
    if path.parent != cache_dir() and path.parent.name == FEATURES and path.parent.exists() \
            and not _real_folder(path.parent):
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(path.parent)
        atomic_write(path, fill, lock=True)
    except OSError:
        return False  # a read-only cache only costs the work next time
    return True


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive flock on ``folder`` itself (no lock file to clean up) while the block runs:
    two processes filling one cache merge their work instead of the last writer winning.
    Without a lock (a read-only folder), the block runs unlocked."""
    import fcntl

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)
