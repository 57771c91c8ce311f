"""Omniglot as a data source: find it, decode it once into a cached uint8 array, split it.

A data root holds ``images_background`` and ``images_evaluation``, each as a folder or a
``.zip`` (the official archives), or torchvision's ``omniglot-py/`` layout of the same.
``download_omniglot`` fetches and checksum-verifies the official zips through
``torchvision.datasets.Omniglot``.

Characters are named ``background/<Alphabet>/<characterNN>`` or
``evaluation/<Alphabet>/<characterNN>``. Splits are JSON files under the repository's
``splits/`` package folder: ``santoro`` (1,200 / 423 characters drawn from all 1,623 with a
fixed seed) and ``lake`` (the official background 964 / evaluation 659).

With no data root given, no ``FEWSHOT_MANN_DATA`` and no downloaded copy, Omniglot at the
paper's 20 x 20 comes from the copy embedded in the package (``embedded.py``).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.errors import DataError, UserError
from fewshot_mann.fileio import (InputError, atomic_write, read_json_file, read_npz, read_regular_file,
                                 remove_abandoned_temporaries)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

PARTS = ("background", "evaluation")
SPLITS = ("santoro", "lake")
SPLIT_DIR = Path(__file__).resolve().parent / "splits"
DRAWERS = 20
# Omniglot drawings are 105 x 105 PNGs of a few hundred bytes; files far beyond these limits
# are hostile or not Omniglot, and are refused before they are read or decoded.
MAX_PIXELS = 1024 * 1024
MAX_PNG_BYTES = 1 << 20
GET_DATA_HINT = (
    "get it with --download (fetches the official zips through torchvision), or point "
    "--data-root / FEWSHOT_MANN_DATA at a folder holding images_background(.zip) and "
    "images_evaluation(.zip)"
)
_NOTICE_SHOWN = False  # the embedded-data line is said once per process
EMBEDDED_NOTICE = ("using the Omniglot embedded in fewshot-mann (1,623 characters x 20 drawers at 20x20; "
                   "no --data-root, FEWSHOT_MANN_DATA or downloaded copy found)")


def default_data_root() -> Path:
    env = os.environ.get("FEWSHOT_MANN_DATA")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"


def cache_dir() -> Path:
    env = os.environ.get("FEWSHOT_MANN_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fewshot-mann"


def download_omniglot(root: str | os.PathLike) -> Path:
    """Fetch both official archives through torchvision (md5-verified); returns the root."""
    from torchvision.datasets import Omniglot

    root = Path(root).expanduser()
    for background in (True, False):
        try:
            Omniglot(str(root), background=background, download=True)
        except Exception as exc:  # network errors, checksum failures
            raise DataError(f"could not download Omniglot into {root}: {exc}") from exc
    return root


class _Source:
    """One Omniglot part (background or evaluation) as a folder or a zip."""

    def __init__(self, part: str, path: Path):
        self.part, self.path = part, path
        self.is_zip = path.suffix == ".zip"

    def fingerprint(self) -> str:
        """What the decode cache is keyed on: a zip's SHA-256 (a re-made archive of the same size
        and time is another archive); for a folder, every PNG's path, size, mtime and ctime in ns
        (re-creating or moving a file changes its ctime, which no tool can set back)."""
        if self.is_zip:
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(2**20), b""):
                    digest.update(block)
            return f"{self.path.resolve()}:{digest.hexdigest()}"
        digest = hashlib.sha256()
        for f in sorted(self.path.glob("*/*/*.png")):
            st = f.stat()
            digest.update(f"{f.relative_to(self.path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\n"
                          .encode("utf-8", "surrogateescape"))
        return f"{self.path.resolve()}:{digest.hexdigest()}"

    def members(self) -> dict[str, list[tuple[str, object]]]:
        """Character name -> sorted list of (file name, handle) of its PNGs."""
        chars: dict[str, list] = {}
        if self.is_zip:
            try:
                zf = zipfile.ZipFile(self.path)
                infos = zf.infolist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.path} is not a readable zip ({exc}); {GET_DATA_HINT}") from exc
            self._zip = zf
            for info in infos:
                parts = info.filename.split("/")
                # Never trust member paths: skip absolute, parent-relative or Windows-style names
                # (members are read in place, never extracted, but a name is still not a path to follow).
                if (info.filename.startswith("/") or ".." in parts or "\\" in info.filename or ":" in info.filename
                        or not info.filename.endswith(".png") or info.is_dir()):
                    continue
                if len(parts) != 4:
                    continue
                chars.setdefault(f"{self.part}/{parts[1]}/{parts[2]}", []).append((parts[3], info))
        else:
            root = self.path.resolve()
            for png in self.path.glob("*/*/*.png"):
                if not png.resolve().is_relative_to(root) or not png.is_file():
                    continue  # never follow links (of the file or of its folders) out of the dataset root
                alphabet, character = png.parent.parent.name, png.parent.name
                chars.setdefault(f"{self.part}/{alphabet}/{character}", []).append((png.name, png))
        return {k: sorted(v, key=lambda m: m[0]) for k, v in sorted(chars.items())}

    def read(self, handle) -> bytes:
        size = handle.file_size if self.is_zip else Path(handle).stat().st_size
        if size > MAX_PNG_BYTES:  # an Omniglot PNG is a few hundred bytes; this is no drawing
            name = handle.filename if self.is_zip else handle
            raise DataError(f"{self.path}: {name} is {size:,} bytes, more than any Omniglot drawing "
                            f"({MAX_PNG_BYTES:,} at most); refusing to read it")
        if self.is_zip:
            try:
                return self._zip.read(handle)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError,
                    ValueError) as exc:  # bad CRC, truncated, encrypted, unsupported compression
                raise DataError(f"{self.path}: member {handle.filename} cannot be read ({_reason(exc)}); "
                                f"the archive is damaged or not the official one; {GET_DATA_HINT}") from exc
        try:
            return read_regular_file(handle, MAX_PNG_BYTES, "Omniglot file")
        except InputError as exc:
            raise DataError(str(exc)) from exc


def find_sources(root: str | os.PathLike) -> list[_Source]:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"Omniglot data root {root} does not exist; {GET_DATA_HINT}")
    sources = []
    for part in PARTS:
        name = f"images_{part}"
        found = None
        for base in (root, root / "omniglot-py"):
            for cand in (base / name, base / f"{name}.zip"):
                if cand.is_dir() and any(cand.iterdir()) or cand.is_file():
                    found = cand
                    break
            if found:
                break
        if found is None:
            raise DataError(f"no {name} folder or {name}.zip under {root}; {GET_DATA_HINT}")
        sources.append(_Source(part, found))
    return sources


def has_sources(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds both Omniglot parts (as folders or zips)."""
    try:
        find_sources(root)
    except DataError:
        return False
    return True


def decode_png(data: bytes, image_size: int, where: str) -> np.ndarray:
    """PNG bytes -> (image_size, image_size) uint8 with strokes bright (255) on black."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size  # from the header: nothing is decoded yet
            if width * height > MAX_PIXELS:
                raise DataError(f"{where} declares {width}x{height} pixels, more than any Omniglot drawing "
                                f"({MAX_PIXELS:,} at most); refusing to decode it (a decompression bomb?)")
            im = im.convert("L").resize((image_size, image_size), Image.Resampling.BOX)
            return 255 - np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # PIL's own DecompressionBombError included
        raise DataError(f"cannot decode {where}: {exc}") from exc


def load_omniglot(root: str | os.PathLike | None, image_size: int = 20, progress: bool = True) -> ClassBank:
    """All 1,623 characters at ``image_size``, decoded once and cached (uint8).

    ``root=None`` means ``$FEWSHOT_MANN_DATA``, else the download location, else (at 20 px)
    the embedded copy, announced in one line on stderr."""
    if root is None and not os.environ.get("FEWSHOT_MANN_DATA") and not has_sources(default_data_root()):
        from fewshot_mann.data import embedded
        if image_size != embedded.IMAGE_SIZE:
            raise DataError(f"Omniglot at {image_size}x{image_size} needs the original images (the copy embedded "
                            f"in fewshot-mann is {embedded.IMAGE_SIZE}x{embedded.IMAGE_SIZE} only); {GET_DATA_HINT}")
        global _NOTICE_SHOWN
        if not _NOTICE_SHOWN:
            print(EMBEDDED_NOTICE, file=sys.stderr)
            _NOTICE_SHOWN = True
        return embedded.load_embedded()
    root = Path(root).expanduser() if root else default_data_root()
    sources = find_sources(root)
    try:
        key = hashlib.sha1("|".join(s.fingerprint() for s in sources).encode()).hexdigest()[:16]
    except OSError as exc:
        raise DataError(f"cannot read the Omniglot data under {root}: {exc.strerror or exc}") from exc
    cache = cache_dir() / f"omniglot-{image_size}px-{key}.npz"
    cached = _cached_bank(cache, image_size)
    if cached is not None:
        return cached
    groups, names = [], []
    members = [(s, name, files) for s in sources for name, files in s.members().items()]
    if not members:
        raise DataError(f"no Omniglot PNGs found under {root}; {GET_DATA_HINT}")
    iterator = members
    if progress:
        from tqdm import tqdm
        iterator = tqdm(members, desc=f"decoding Omniglot at {image_size}px (once)", unit="char", leave=False)
    for source, name, files in iterator:
        imgs = [decode_png(source.read(h), image_size, f"{source.path}:{fn}") for fn, h in files]
        groups.append(np.stack(imgs)[:, None])
        names.append(name)
    bank = ClassBank.from_groups(groups, names)

    def write(f):
        np.savez(f, images=bank.images, counts=bank.counts, names=np.array(bank.names))
    try:
        remove_abandoned_temporaries(cache.parent, lambda name: re.fullmatch(r"omniglot-\d+px-[0-9a-f]{16}\.npz", name))
        atomic_write(cache, write, lock=True)  # locked: an abandoned one is known (cache_files)
    except OSError:
        pass  # a read-only cache only costs the decode next time
    return bank


def _cached_bank(cache: Path, image_size: int) -> ClassBank | None:
    """The bank in the Omniglot cache file ``cache``; None where it is absent, damaged or foreign
    (only a file the caches own holding uint8 drawings of this size, one name and a positive count
    a character, is answered: ``fileio.read_npz``)."""
    def expect(h):
        (di, si), (dc, sc), (dn, sn) = h["images"], h["counts"], h["names"]
        return (di == np.uint8 and si[1:] == (1, image_size, image_size) and dc.kind in "iu" and len(sc) == 1
                and dn.kind == "U" and sn == sc)
    z = read_npz(cache, {"images.npy", "counts.npy", "names.npy"}, expect)
    if z is None:
        return None
    counts = z["counts"].astype(np.int64)
    if not (counts > 0).all() or int(counts.sum()) != len(z["images"]):
        return None
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ClassBank(z["images"], offsets, counts, [str(n) for n in z["names"]])


PARTS_OF_SPLIT = ("train", "validation", "test")


def load_split(name: str) -> dict:
    """A class split: ``santoro`` / ``lake`` (package data ``splits/omniglot_<name>.json``) or the
    path of a JSON file of the same form, ``{"train": [names], "validation": [names], "test": [names]}``
    (pairwise disjoint; ``validation`` may be absent in a user's file: then no validation classes)."""
    if name in SPLITS:
        path = SPLIT_DIR / f"omniglot_{name}.json"
    elif name.endswith(".json"):
        path = Path(name).expanduser()
    else:
        raise UserError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}, "
                        "or give a .json file with \"train\", \"validation\" and \"test\" lists of character names")
    try:
        spec = read_json_file(path, "split file")
    except InputError as exc:
        raise DataError(str(exc)) from exc
    if not isinstance(spec, dict):
        raise DataError(f"split file {path} must hold a JSON object with \"train\" and \"test\" lists")
    spec = dict(spec)
    spec.setdefault("validation", [])
    for part in PARTS_OF_SPLIT:
        names = spec.get(part)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or (
                part != "validation" and not names):
            raise DataError(f"split file {path} must hold non-empty \"train\" and \"test\" lists of character names"
                            " (and optionally a \"validation\" list)")
    for a, b in (("train", "test"), ("train", "validation"), ("validation", "test")):
        both = sorted(set(spec[a]) & set(spec[b]))
        if both:
            raise DataError(f"split file {path} puts {len(both)} character(s) in both {a} and {b} (e.g. {both[0]})")
    return spec


def split_parts(bank: ClassBank, split: str) -> dict[str, ClassBank]:
    """``{"train", "validation", "test"}`` -> bank, for a named split; classes pairwise disjoint."""
    spec = load_split(split)
    index = {n: i for i, n in enumerate(bank.names)}
    out = {}
    for part in PARTS_OF_SPLIT:
        missing = [n for n in spec[part] if n not in index]
        if missing:
            raise DataError(
                f"split {split!r} names {len(missing)} characters not in the data (e.g. {missing[0]}); "
                "is the data root a complete Omniglot?")
        out[part] = bank.subset([index[n] for n in spec[part]])
    return out


def split_banks(bank: ClassBank, split: str) -> tuple[ClassBank, ClassBank]:
    """(train, test) banks for a named split; their characters are disjoint."""
    parts = split_parts(bank, split)
    return parts["train"], parts["test"]


def make_santoro_split(names: list[str], seed: int = 2016, train: int = 1200, validation: int = 100,
                       validation_seed: int = 2017) -> dict:
    """Draw 1,200 train / 423 test characters from all of them with a fixed seed, then hold out
    ``validation`` of the 1,200 as validation classes with a second seed (the test set stays
    the paper protocol's 423)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    trained = sorted(names[i] for i in order[:train])
    pick = np.random.default_rng(validation_seed).permutation(len(trained))
    return {
        "seed": seed,
        "validation_seed": validation_seed,
        "train": sorted(trained[i] for i in pick[validation:]),
        "validation": sorted(trained[i] for i in pick[:validation]),
        "test": sorted(names[i] for i in order[train:]),
    }


def write_png_folder(root: str | os.PathLike | None, out: str | os.PathLike, characters: list[str]) -> int:
    """Copy the original drawings (dark ink on white, 105 x 105 PNG) of ``characters`` into
    ``out/<alphabet>__<character>/<file>.png``, a class-per-folder dataset as a user would have.
    Returns the number of files written. For tests, docs and meta-training a backbone model on
    Omniglot (``--dataset folder``)."""
    root = Path(root).expanduser() if root else default_data_root()
    out = Path(out)
    wanted = set(characters)
    written = 0
    for source in find_sources(root):
        for name, files in source.members().items():
            if name not in wanted:
                continue
            folder = out / name.split("/", 1)[1].replace("/", "__")
            folder.mkdir(parents=True, exist_ok=True)
            for file_name, handle in files:
                data = source.read(handle)
                atomic_write(folder / file_name, lambda f, data=data: f.write(data))
                written += 1
    return written
