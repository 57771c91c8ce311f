"""Any image folder as a dataset: one sub-folder per class (torchvision ImageFolder layout).

    DIR/<class name>/<image>          (images may sit in nested folders inside a class)

``load_folder`` walks it (``scan.py``), decodes every image with one ``ImageReader``
(``images.py``) or takes the decode from the cache (``decode_cache.py``), and drops what
cannot be used. The class split into training, validation and test classes is
``class_split.py``.

Problems are found, never fatal on their own: every file that cannot be used is skipped
and reported as a ``Problem`` naming it (corrupt/unreadable, not an image, too large to
decode safely, a link pointing out of the folder, a file outside any class folder, an
exact duplicate, an empty class).

Duplicates (same SHA-256 of the file bytes): copies inside one class keep the first;
a file found in two or more classes is label leakage (one picture, two answers), so every
copy is skipped. The same holds across ``--data-root`` and ``--test-root``.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fewshot_mann.data import decode_cache
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.images import IMAGE_EXTENSIONS, MAX_FILE_BYTES, MAX_PIXELS, BadImage, ImageReader
from fewshot_mann.data.scan import Problem, is_image_name, relative, scan_folder
from fewshot_mann.errors import DataError


@dataclass
class FolderData:
    """A decoded image folder.

    bank: usable classes in name order, images (N, channels, image_size, image_size) uint8;
    digests: (N,) SHA-256 (hex) of each image's file; problems: everything skipped;
    stats: class name -> {"size_min": [w, h], "size_max": [w, h] (smallest and largest width
    and height as stored), "modes": [...], "formats": [...]} over its readable images.
    """

    root: Path
    bank: ClassBank
    digests: np.ndarray
    problems: list[Problem]
    stats: dict[str, dict]
    class_folders: list[str] = field(default_factory=list)
    from_cache: bool = False


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def as_reader(reader: ImageReader | None, image_size: int, channels: int, resize: str, polarity: str, ink_frame: str,
              max_pixels: int) -> ImageReader:
    """``reader``, or one made of the loose settings (the short form of tests and scripts)."""
    return reader if reader is not None else ImageReader(image_size, channels, resize, polarity, ink_frame, max_pixels)


def load_folder(root: str | os.PathLike, image_size: int = 20, channels: int = 1, resize: str = "pad", *,
                reader: ImageReader | None = None, progress: bool = True, cache: bool = True,
                option: str = "--data-root", max_pixels: int = MAX_PIXELS, polarity: str = "keep",
                ink_frame: str = "keep") -> FolderData:
    """Decode (or load from the cache) every usable image of a class-per-folder dataset, read by
    ``reader`` (or the reader of the loose settings). ``cache``: read and write the decode cache."""
    reader = as_reader(reader, image_size, channels, resize, polarity, ink_frame, max_pixels)
    root, classes, problems = scan_folder(root, option)
    class_folders = sorted(set(classes) | {p.path.rstrip("/") for p in problems if p.kind == "empty-class"})
    if cache:
        cached = decode_cache.load(decode_cache.cache_path(root, classes, reader)[0], reader, classes)
        if cached is not None:
            bank, digests, decode_problems, stats = cached
            return FolderData(root, bank, digests, problems + decode_problems, stats, class_folders, True)

    decoded, stats, decode_problems, transient = _decode_classes(root, classes, reader, progress)
    drop = _drop_duplicates(decoded, decode_problems)
    bank, digests_arr = _bank_of(decoded, drop, decode_problems, reader)
    if cache and not transient:  # keyed on the bytes just decoded, not on the look-up's read
        path, prefix = decode_cache.cache_path(root, classes, reader, stamps=decoded.stamps)
        decode_cache.save(path, prefix, bank, digests_arr, decode_problems, stats)
    return FolderData(root, bank, digests_arr, problems + decode_problems, stats, class_folders, False)


class _Decoded(dict):
    """``{class: [(rel, image, digest)]}``, and ``stamps``: path -> SHA-256 of the bytes read
    (None where the content could not be read)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.stamps: dict[Path, str | None] = {}


def _decode_classes(root: Path, classes: dict[str, list], reader: ImageReader, progress: bool):
    """Every file of every class decoded: ``({class: [(rel, image, digest)]}, {class: stats},
    problems, transient)``; ``transient``: a failure that says nothing about the file (the
    result must not be cached)."""
    problems: list[Problem] = []
    jobs = [(name, f) for name, files in classes.items() for f in files]
    iterator = jobs
    if progress:
        from tqdm import tqdm
        iterator = tqdm(jobs, desc=f"decoding {root.name} at {reader.image_size}px (once)", unit="img", leave=False)
    decoded = _Decoded({name: [] for name in classes})
    stats: dict[str, dict] = {}
    transient = False
    for name, path in iterator:
        rel = relative(path, root)
        try:
            image, info, digest = reader.read(path)
        except BadImage as exc:
            problems.append(Problem(exc.kind, rel, str(exc)))
            transient = transient or exc.transient
            decoded.stamps[path] = exc.digest
            continue
        decoded.stamps[path] = digest
        decoded[name].append((rel, image, digest))
        _add_stats(stats, name, info)
    for s in stats.values():
        s["modes"].sort()
        s["formats"].sort()
    return decoded, stats, problems, transient


def _add_stats(stats: dict[str, dict], name: str, info: dict) -> None:
    s = stats.setdefault(name, {"size_min": info["size"], "size_max": info["size"], "modes": [], "formats": []})
    s["size_min"] = [min(a, b) for a, b in zip(s["size_min"], info["size"])]
    s["size_max"] = [max(a, b) for a, b in zip(s["size_max"], info["size"])]
    for key, value in (("modes", info["mode"]), ("formats", info["format"])):
        if value not in s[key]:
            s[key].append(value)


def decode_uploads(files: list[tuple[str, bytes]], image_size: int = 20, channels: int = 1, resize: str = "pad", *,
                   reader: ImageReader | None = None, max_pixels: int = MAX_PIXELS, polarity: str = "keep",
                   ink_frame: str = "keep", option: str = "support") -> FolderData:
    """``load_folder`` for a folder given as bytes in memory (the web app's uploads): ``files`` are
    (relative path ``<class>/.../<image>``, file bytes). The same decoding, checks and problems
    (stray files, non-images, unreadable, duplicates, empty classes); nothing is read from or
    written to disk, nothing cached."""
    reader = as_reader(reader, image_size, channels, resize, polarity, ink_frame, max_pixels)
    problems: list[Problem] = []
    classes: dict[str, list[tuple[str, bytes]]] = {}
    for rel, data in sorted(files, key=lambda f: f[0]):
        parts = [p for p in rel.replace("\\", "/").split("/") if p]
        if not parts or any(p.startswith(".") for p in parts):  # .DS_Store, as walk_images
            continue
        if len(parts) == 1:
            problems.append(Problem("stray-file", rel, "file outside any class folder (each class is a sub-folder)"))
        elif not is_image_name(parts[-1]):
            problems.append(Problem("not-image", rel, f"not an image file (extension not one of {' '.join(IMAGE_EXTENSIONS)})"))
        else:
            classes.setdefault(parts[0], []).append(("/".join(parts), data))
    if not classes:
        raise DataError(f"{option} has no class sub-folders with image files; expected <class name>/<images> "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    decoded: dict[str, list[tuple[str, np.ndarray, str]]] = {name: [] for name in classes}
    stats: dict[str, dict] = {}
    for name, items in classes.items():
        for rel, data in items:
            try:
                if len(data) > MAX_FILE_BYTES:
                    raise BadImage("too-large", f"file is {len(data) / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} "
                                   "MB limit; not read")
                if not data:
                    raise BadImage("unreadable", "empty file")
                image, info = reader.decode(data)
            except BadImage as exc:
                problems.append(Problem(exc.kind, rel, str(exc)))
                continue
            decoded[name].append((rel, image, hashlib.sha256(data).hexdigest()))
            _add_stats(stats, name, info)
    for s in stats.values():
        s["modes"].sort()
        s["formats"].sort()
    drop = _drop_duplicates(decoded, problems)
    bank, digests = _bank_of(decoded, drop, problems, reader)
    return FolderData(Path(option), bank, digests, problems, stats, sorted(classes), False)


def _drop_duplicates(decoded: dict[str, list], problems: list[Problem]) -> set[str]:
    """The files to skip as duplicates by content (each reported into ``problems``): one
    picture under two labels is leakage, so every copy goes; within a class, all but the first."""
    where: dict[str, list[tuple[str, str]]] = {}
    for name, items in decoded.items():
        for rel, _, digest in items:
            where.setdefault(digest, []).append((name, rel))
    drop: set[str] = set()
    for places in where.values():
        if len(places) < 2:
            continue
        owners = sorted({n for n, _ in places})
        files = [rel for _, rel in places]
        if len(owners) > 1:
            for rel in files:
                others = ", ".join(f for f in files if f != rel)
                problems.append(Problem("duplicate", rel, f"same file as {others} (classes "
                                        f"{', '.join(owners)}): label leakage, all copies skipped"))
            drop.update(files)
        else:
            for rel in files[1:]:
                problems.append(Problem("duplicate-in-class", rel, f"same file as {files[0]}; copy skipped"))
            drop.update(files[1:])
    return drop


def _bank_of(decoded: dict[str, list], drop: set[str], problems: list[Problem],
             reader: ImageReader) -> tuple[ClassBank, np.ndarray]:
    """The bank of the kept images and their digests; a class left empty is reported into ``problems``."""
    groups, names, digests = [], [], []
    for name, items in decoded.items():
        kept = [(img, d) for rel, img, d in items if rel not in drop]
        if not kept:
            problems.append(Problem("empty-class", name + "/", "no usable images left (all skipped)"))
            continue
        groups.append(np.stack([img for img, _ in kept]))
        digests += [d for _, d in kept]
        names.append(name)
    bank = ClassBank.from_groups(groups, names) if groups else \
        ClassBank(np.zeros((0, reader.channels, reader.image_size, reader.image_size), np.uint8), np.zeros(0, np.int64),
                  np.zeros(0, np.int64), [])
    return bank, np.asarray(digests, dtype="<U64")


def report_problems(data: FolderData, option: str, report=warn) -> None:
    for p in data.problems:
        report(f"skipped {option} {p.describe()}")

