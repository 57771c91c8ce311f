"""File I/O at the edges: atomic writes, checked output paths, bounded reads.

Writes: a temporary name in the same folder, fsync, rename. A crash at any moment leaves
either the old file or the new one, never half of one. A symbolic link is written
*through*: its target is replaced and the link stays. A target that is not a regular
file (a folder, a device node, a FIFO, a socket) is refused, never replaced. Every
``OSError`` becomes one line naming the path (``OutputError``, both a ``UserError`` and
an ``OSError``). Output paths are checked with ``check_output_path`` before any work.

Reads: ``read_regular_file`` reads one regular file of at most ``limit`` bytes (a device,
FIFO or folder is refused without being opened for reading); ``read_json_file`` also
bounds the nesting depth (``MAX_JSON_DEPTH``) before the parser sees the text.
"""
from __future__ import annotations

import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from fewshot_mann.errors import UserError

MAX_JSON_BYTES = 16 * 2**20  # config files, split files: a real one is a few kB
MAX_JSON_DEPTH = 64  # nesting of [ and {: a config has 2, a split file 2


class OutputError(UserError, OSError):
    """An output that cannot be written; one line naming the path (also an ``OSError``)."""


def same_file(a, b) -> bool:
    """True if ``a`` and ``b`` are one file (the same path, a symbolic link or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _output_error(exc: OSError, message: str) -> OutputError:
    error = OutputError(message)
    error.errno = exc.errno  # (strerror and filename stay unset: str() is the message alone)
    return error


class InputError(UserError):
    """An input file that cannot be read safely (not regular, too large, too deeply nested)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def write_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` replaces: ``path`` itself, or the target of the symbolic
    link(s) it names (writes go through links). ``OutputError`` if that is not a regular file."""
    path = Path(path).expanduser()
    try:
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:  # ENOTDIR: a path under a file; ELOOP; EACCES; ENAMETOOLONG
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        what = "is a folder; name a file" if stat.S_ISDIR(st.st_mode) else \
            f"is {_kind(st.st_mode)}; refusing to write to it (name a regular file)"
        raise OutputError(f"{path} {what}")
    return target


def check_output_path(path, option: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Before any work: ``OutputError`` (one line naming ``option`` and the path) unless a
    file can be written at ``path``: a regular file or nothing is there, its folder exists
    (or can be made) and a file can be created in it. ``None`` or ``"-"`` (stdout) pass."""
    if path is None or str(path) == "-":
        return
    if not str(path).strip():
        raise OutputError(f"{option}: an empty path; name a file")
    given = Path(path).expanduser()
    if suffixes and given.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {path}: the file name must end in {' or '.join(suffixes)} "
                          f"(got {given.suffix or 'no extension'!r})")
    try:
        target = write_target(given)
    except OutputError as exc:
        raise OutputError(f"{option}: {exc}") from exc
    parent = target.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder")
    if ancestor != parent:  # the folder will be made: the nearest existing one must take it
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path}: cannot create folders in {ancestor} (not writable)")
        return
    try:  # the only honest test: create (and remove) a file where the output will go
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write in {parent} ({_reason(exc)})") from exc


class _RawFile(io.FileIO):
    """A file whose writes are plain ``os.write`` calls (so a full disk can be simulated
    by patching ``os.write``, and every write path is the same)."""

    def write(self, b) -> int:
        return os.write(self.fileno(), b)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None], *, lock: bool = False) -> None:
    """Call ``write(f)`` on a temporary file next to ``path`` and rename it into place.

    Raises ``OutputError`` for any ``OSError`` (naming ``path``); a failing ``write`` leaves
    the old file as it was and no temporary file behind. ``lock``: hold an exclusive
    ``flock`` on the temporary file until it is renamed, so a cleaner can tell the temporary
    file of a live writer (locked) from one left by a writer killed halfway (the kernel
    dropped its lock): ``temporary_is_abandoned``."""
    shown = path
    path = write_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _output_error(exc, f"cannot write {shown}: {_reason(exc)}") from exc
    held = _hold_lock(fd) if lock else None
    try:
        _write_and_rename(fd, tmp, path, shown, write)
    finally:
        if held is not None:
            os.close(held)


def _hold_lock(fd: int) -> int | None:
    """A duplicate of ``fd`` holding an exclusive flock (released when it is closed), or None."""
    import fcntl

    try:
        held = os.dup(fd)
    except OSError:
        return None
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(held)
        return None
    return held


def temporary_is_abandoned(path: str | os.PathLike) -> bool:
    """True if the temporary file ``path`` of an ``atomic_write(..., lock=True)`` has no live
    writer: it is a regular file (not a link) and its flock can be taken now."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def read_npz(path: str | os.PathLike, members: set[str], expect: Callable[[dict], bool]) -> dict | None:
    """The arrays of the ``.npz`` file ``path`` as ``numpy.savez`` writes them, or None: opened once
    without following a link or blocking (a FIFO or a device is never read), exactly ``members``,
    each stored uncompressed, no object arrays, and ``expect`` accepting ``{name: (dtype, shape)}``
    read from the headers before any data: reading costs at most the file's size on disk, whatever
    its headers claim (a zip bomb is never inflated)."""
    import zipfile

    import numpy as np

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f, zipfile.ZipFile(f) as z:
            infos = z.infolist()
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or {i.filename for i in infos} != members \
                    or any(i.compress_type != zipfile.ZIP_STORED for i in infos):
                return None
            headers = {}
            for i in infos:
                with z.open(i) as m:
                    version = np.lib.format.read_magic(m)
                    shape, _, dtype = {(1, 0): np.lib.format.read_array_header_1_0,
                                       (2, 0): np.lib.format.read_array_header_2_0}[version](m)
                headers[i.filename[:-4]] = (dtype, tuple(shape))
            if any(d.hasobject for d, _ in headers.values()) or not expect(headers):
                return None
            out = {}
            for i in infos:
                with z.open(i) as m:
                    out[i.filename[:-4]] = np.lib.format.read_array(m, allow_pickle=False)
            return out
    except Exception:  # noqa: BLE001 - damaged, foreign or out of memory: the caller's to rebuild
        return None


def remove_abandoned_temporaries(folder: str | os.PathLike, owns: Callable[[str], bool]) -> int:
    """Remove from ``folder`` the temporary files ``.NAME.XXXX.tmp`` of ``atomic_write(..., lock=True)``
    whose ``NAME`` ``owns`` accepts and whose writer is gone (``temporary_is_abandoned``); how many."""
    import re

    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        m = re.fullmatch(r"\.(?P<name>[^/]+)\.[A-Za-z0-9_]{1,32}\.tmp", name)
        path = Path(folder) / name
        if m and owns(m["name"]) and temporary_is_abandoned(path):
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
    return removed


def _write_and_rename(fd: int, tmp: str, path: Path, shown, write) -> None:
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; results should read like any other file
        with io.BufferedWriter(_RawFile(fd, "wb", closefd=True), buffer_size=2**20) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _output_error(exc, f"cannot write {shown}: {_reason(exc)}") from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _mode_for(path: Path) -> int:
    """The mode the file would get from a plain open(): the old file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    # surrogateescape: a file or folder name that is not valid UTF-8 is written back as its own bytes
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (JSON ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def json_text(obj: Any, **kwargs) -> str:
    """Strict JSON: a non-finite number is written as ``null``, never as bare ``NaN``."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)


def atomic_write_json(path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj, indent=2, sort_keys=False) + "\n")


def append_line(path, line: str) -> None:
    """Append one line and fsync (metrics logs: a crash loses at most the last line)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise _output_error(exc, f"cannot append to {path}: {_reason(exc)}") from exc


def read_regular_file(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of one regular file of at most ``limit`` bytes; ``InputError`` (one line)
    for a missing file, a folder, device, FIFO or socket (never opened for reading, so a
    FIFO cannot hang us), a larger file (also one that grows while read) or an OSError."""
    path = Path(path).expanduser()
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise InputError(f"{what} {path} is {st.st_size:,} bytes, over the {limit:,}-byte limit; not read")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped between the stat and the open
                raise InputError(f"{what} {path} is not a regular file")
            data = f.read(limit + 1)
    except FileNotFoundError as exc:
        raise InputError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {_reason(exc)}") from exc
    if len(data) > limit:
        raise InputError(f"{what} {path} is over the {limit:,}-byte limit; not read")
    return data


def json_depth(text: str, limit: int) -> int:
    """The nesting depth of ``[``/``{`` in JSON ``text`` (strings skipped), counting stops
    just past ``limit``: a linear scan with no recursion, so any input is safe to measure."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(text: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with the nesting depth bounded first; ``InputError`` for invalid JSON."""
    if json_depth(text, max_depth) > max_depth:
        raise InputError(f"{what} is nested more than {max_depth} levels deep; not a config or split file")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{what} is not valid JSON: {_reason(exc)}") from exc


def read_json_file(path: str | os.PathLike, what: str = "JSON file", limit: int = MAX_JSON_BYTES,
                   max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON file read with ``read_regular_file`` bounds and a bounded nesting depth."""
    data = read_regular_file(path, limit, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text") from exc
    return parse_json(text, f"{what} {path}", max_depth)


class RunLock:
    """An exclusive ``fcntl.flock`` on ``DIR/.lock``: one training at a time per run folder.

    The lock belongs to the open file, so the kernel releases it when the process ends in any
    way (``SIGKILL`` included): a lock never outlives its run and needs no cleaning up. The
    file holds the owner's pid, for the message the second run prints."""

    NAME = ".lock"

    def __init__(self):
        self.fd: int | None = None

    def acquire(self, folder: Path, what: str = "--out") -> None:
        import fcntl

        path = Path(folder) / self.NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _output_error(exc, f"{what} {folder}: cannot create the run lock {path}: {_reason(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            except OSError:
                owner = "?"
            os.close(fd)
            raise UserError(f"{what} {folder} is in use by another training (pid {owner}); wait for it to "
                            "finish or name another --out") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the lock
            self.fd = None
