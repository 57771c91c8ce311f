"""Walking a class-per-folder dataset without decoding it: which files are which class's images,
and every ``Problem`` found on the way.

    DIR/<class name>/<image>          (images may sit in nested folders inside a class)

Symbolic links that point outside the dataset root are not followed; class folders nested
deeper than ``MAX_FOLDER_DEPTH`` are reported, not walked; a class folder that links to
another class is reported as such; hidden files (``.DS_Store``) are passed over.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fewshot_mann.data.images import IMAGE_EXTENSIONS, short_error
from fewshot_mann.errors import DataError

MAX_FOLDER_DEPTH = 32  # folder levels inside a class folder that are walked; deeper ones are reported

# kind -> what it means for the person reading the report
PROBLEM_KINDS = {
    "unreadable": "corrupt or unreadable image (skipped)",
    "too-large": "image too large to decode safely (skipped, not decoded)",
    "not-image": "not an image file (skipped)",
    "outside-link": "link pointing outside the dataset folder (not followed)",
    "stray-file": "file outside any class folder (skipped)",
    "empty-class": "class folder without usable images (skipped)",
    "duplicate": "same file in two or more classes: label leakage (all copies skipped)",
    "duplicate-in-class": "same file twice in one class (extra copies skipped)",
    "too-few-images": "fewer images than an episode needs (class skipped)",
    "too-few-classes": "fewer classes than an episode needs (cannot train or evaluate)",
    "linked-class": "class folder that is a link to another class folder (skipped; the other is used)",
    "too-deep": f"folder nested more than {MAX_FOLDER_DEPTH} levels inside its class (not read)",
}


@dataclass
class Problem:
    """One thing wrong with a dataset folder. ``path`` is relative to the folder ("" = the folder)."""

    kind: str
    path: str
    message: str

    def describe(self) -> str:
        where = self.path or "."
        return f"{where}: {self.message}"


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # broken or looping link
        return False


def _link_problem(path: Path, root: Path, shown: str) -> Problem | None:
    """The problem of a symbolic link that is not followed: a loop (named as one), or a link out of the folder."""
    try:
        path.resolve(strict=False)
    except (OSError, RuntimeError):
        return Problem("unreadable", shown, "symbolic link loop (the link leads back to itself); not followed")
    if not _inside(path, root):
        return Problem("outside-link", shown, PROBLEM_KINDS["outside-link"])
    return None


def _not_a_file(path: Path) -> str:
    """What ``path`` is, when it is neither a folder nor a regular file (a FIFO is never opened)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken link (what it points to does not exist)"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or short_error(exc)})"
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"{kind}, not an image file"


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def walk_images(folder: Path, root: Path, problems: list[Problem], visited: set, depth: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), not following links out of ``root``,
    at most ``MAX_FOLDER_DEPTH`` folder levels deep (a deeper folder is a ``too-deep`` problem)."""
    if depth > MAX_FOLDER_DEPTH:
        problems.append(Problem("too-deep", relative(folder, root), PROBLEM_KINDS["too-deep"]))
        return []
    try:
        real = folder.resolve()
        if real in visited:  # a link looping back into an already-walked folder
            return []
        visited.add(real)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        problems.append(Problem("unreadable", relative(folder, root), f"cannot list folder ({exc.strerror or short_error(exc)})"))
        return []
    files = []
    for entry in entries:
        if entry.name.startswith("."):  # .DS_Store, .ipynb_checkpoints, editor temp files
            continue
        path = Path(entry.path)
        if entry.is_symlink() and (bad := _link_problem(path, root, relative(path, root))):
            problems.append(bad)
            continue
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            files += walk_images(path, root, problems, visited, depth + 1)
        elif is_file and is_image_name(entry.name):
            files.append(path)
        elif is_file:
            problems.append(Problem("not-image", relative(path, root),
                                    f"not an image file (extension not one of {' '.join(IMAGE_EXTENSIONS)})"))
        else:
            problems.append(Problem("unreadable", relative(path, root), _not_a_file(path)))
    return files


def scan_folder(root: str | os.PathLike, option: str = "--data-root") -> tuple[Path, dict[str, list[Path]], list[Problem]]:
    """(resolved root, class name -> sorted image paths, problems found without decoding)."""
    given = Path(root).expanduser()
    if not given.exists():
        raise DataError(f"{option} {given} does not exist")
    if not given.is_dir():
        raise DataError(f"{option} {given} is not a folder; it should hold one sub-folder per class")
    root = given.resolve()
    problems: list[Problem] = []
    classes: dict[str, list[Path]] = {}
    visited: set = {root}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{option} {given}: cannot list the folder ({exc.strerror or short_error(exc)})") from exc
    owner = _class_owners(entries)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_symlink() and (bad := _link_problem(path, root, entry.name)):
            problems.append(bad)
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            problems.append(Problem("stray-file", entry.name, "file outside any class folder (each class is a sub-folder)"))
            continue
        try:
            real = path.resolve()
        except (OSError, RuntimeError):
            real = None
        if real is not None and owner.get(real, entry.name) != entry.name:
            problems.append(Problem("linked-class", entry.name + "/",
                                    f"link to the class folder {owner[real]}/ (the same images); skipped, "
                                    f"its images count for {owner[real]}"))
            continue
        files = walk_images(path, root, problems, visited)
        if files:
            classes[entry.name] = files
        else:
            problems.append(Problem("empty-class", entry.name + "/", "class folder holds no image files"))
    if not classes:
        raise DataError(f"{option} {given} has no class sub-folders with image files; expected "
                        f"{given}/<class name>/<images> ({', '.join(IMAGE_EXTENSIONS)})")
    return root, classes, problems


def _class_owners(entries) -> dict[Path, str]:
    """Resolved class folder -> the class that owns its images. A class folder that is a link to
    another class folder: the real folder keeps its images (whatever the names' order), the link
    is reported as such."""
    owner: dict[Path, str] = {}
    for entry in entries:
        if not entry.name.startswith(".") and not entry.is_symlink():
            try:
                if entry.is_dir():
                    owner[Path(entry.path).resolve()] = entry.name
            except OSError:
                pass
    for entry in entries:
        if entry.is_symlink() and not entry.name.startswith("."):
            try:
                real = Path(entry.path).resolve()
            except (OSError, RuntimeError):
                continue
            if real in owner and owner[real] != entry.name:
                continue
            owner.setdefault(real, entry.name)
    return owner
