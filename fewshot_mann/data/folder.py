"""Any image folder as a dataset: one sub-folder per class (torchvision ImageFolder layout).

    DIR/<class name>/<image>          (images may sit in nested folders inside a class)

Files with torchvision's image extensions (``IMG_EXTENSIONS``: PNG, JPEG, BMP, TIFF,
WebP, PPM/PGM) are decoded by PIL; any mode (1-bit, grayscale, RGB, RGBA, palette,
16-bit, float) and any size or aspect. Each image becomes ``(channels, image_size,
image_size)`` uint8:

- orientation: the EXIF orientation tag of phone/camera photos is applied;
- transparency (RGBA, LA, palette with a transparent colour) is composited onto black;
- 16-bit, 32-bit and float grayscale are stretched from their own min..max to 0..255
  (medical exports rarely use the full 16-bit range, so a fixed /257 would leave them black);
- ``channels`` 1 = grayscale (ITU-R 601 luma), 3 = RGB (grayscale replicated);
- ``resize``: ``pad`` (default: the whole image, scaled to fit and letterboxed with black,
  so nothing at the border is lost), ``crop`` (centre square, then scaled) or ``stretch``
  (scaled to a square, aspect not kept). Area averaging when shrinking, bicubic when enlarging.

Decoded once into a cache (``omniglot.cache_dir()``) keyed by the folder's image file list
with the SHA-256 of every file's bytes (not sizes and times, which can stay the same while
pixels or classes change), plus image size, channels and resize policy: a re-run reads the
files but decodes nothing, and a changed folder is decoded again (the stale cache file is
removed). A failure that says nothing about the file (out of memory, an I/O error) is never
cached. Class folders nested deeper than ``MAX_FOLDER_DEPTH`` are reported, not walked; a
class folder that links to another class is reported as such.

Problems are found, never fatal on their own: every file that cannot be used is skipped
and reported as a ``Problem`` naming it (corrupt/unreadable, not an image, too large to
decode safely, a link pointing out of the folder, a file outside any class folder, an
exact duplicate, an empty class). Hardening: symbolic links that point outside the dataset
root are not followed; an image whose header declares more than ``MAX_PIXELS`` pixels is
refused before decoding (decompression bombs); files over ``MAX_FILE_BYTES`` are not read.

Duplicates (same SHA-256 of the file bytes): copies inside one class keep the first;
a file found in two or more classes is label leakage (one picture, two answers), so every
copy is skipped. The same holds across ``--data-root`` and ``--test-root``.

Class split (``load_folder_parts``): test classes come from a separate ``--test-root`` folder,
or ``--test-classes`` as a fraction (default ``DEFAULT_TEST_FRACTION``) or a comma-separated
list of class names, or ``all`` (cross-domain evaluation: every class is held out). A
fraction ranks classes by SHA-256 of ``"<seed>/<class name>"`` (seed = ``cfg.train.seed``)
and holds out the first ``round(fraction * classes)``. Validation classes (for every
in-training check and choice) come from the remaining classes the same way, ranked by
``"validation/<seed>/<class name>"`` (``--validation-classes``, default
``DEFAULT_VALIDATION_FRACTION`` of all classes, or names, or ``none``). The split is a pure
function of the config and the class names; the checkpoint also records the three class
lists and the training images' digests, so evaluation scores the recorded test classes even
after classes were added to the folder, and refuses to call a trained class held out.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import stat
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS

from fewshot_mann.data import cache_files
from fewshot_mann.data.bank import ClassBank, SplitBanks, empty_bank
from fewshot_mann.data.wording import instances_name, instances_option, lower_instances
from fewshot_mann.config import RESIZE_POLICIES, Config, is_backbone
from fewshot_mann.errors import DataError, UserError
from fewshot_mann.fileio import InputError, atomic_write_json, read_regular_file
from fewshot_mann.data.omniglot import cache_dir

IMAGE_EXTENSIONS = tuple(IMG_EXTENSIONS) + (".gif",)  # GIF: its first frame (PIL decodes it)
MAX_PIXELS = 50_000_000  # refuse images declaring more (a 50 MP RGBA decode is already 200 MB)
MAX_FILE_BYTES = 256 * 2**20
DEFAULT_TEST_FRACTION = 0.3
DEFAULT_VALIDATION_FRACTION = 0.2
CACHE_VERSION = 3  # 3: keyed on file contents
MAX_FOLDER_DEPTH = 32  # folder levels inside a class folder that are walked; deeper ones are reported
TRANSIENT_ERRNOS = {errno.EIO, errno.ENOMEM, errno.EINTR, errno.EAGAIN, errno.ENFILE, errno.EMFILE, errno.ETIMEDOUT}
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

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


class BadImage(DataError):
    """One image file that cannot be used; ``kind`` is a ``PROBLEM_KINDS`` key. ``transient``:
    the failure says nothing about the file (out of memory, an I/O hiccup), so it is never
    cached: the next run tries the file again."""

    def __init__(self, kind: str, message: str, transient: bool = False):
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.digest: str | None = None  # SHA-256 of the bytes that failed to decode, where they were read


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------- decoding

def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> "L" (channels 1) or "RGB" (channels 3), see the module docstring."""
    if im.mode in HIGH_BIT_MODES:
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if a.ndim != 2:
            raise ValueError(f"unexpected {im.mode} array shape {a.shape}")
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("L" if channels == 1 else "RGB")


def resize_problem(policy: str) -> str | None:
    """None if ``policy`` is one the reader applies (a RESIZE_POLICIES name but auto/backbone, which
    ``reader_settings`` resolves, or ``fraction:F``: shorter side to size / F, centre crop)."""
    if policy in RESIZE_POLICIES and policy not in ("auto", "backbone"):
        return None
    if policy.startswith("fraction:"):
        try:
            if 0.1 <= float(policy.split(":", 1)[1]) <= 1.0:
                return None
        except ValueError:
            pass
    return f"--resize must be one of {', '.join(RESIZE_POLICIES)} (got {policy!r})"


def _resize(im: Image.Image, size: int, policy: str) -> Image.Image:
    w, h = im.size
    if policy.startswith("fraction:"):  # timm's eval transform: shorter side to size / crop_pct, centre crop
        scale = size / float(policy.split(":", 1)[1]) / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        return im.crop((left, top, left + size, top + size))
    method = Image.Resampling.BOX if min(w, h) >= size else Image.Resampling.BICUBIC
    if policy == "stretch":
        return im.resize((size, size), method)
    if policy == "crop":
        return ImageOps.fit(im, (size, size), method=method)
    return ImageOps.pad(im, (size, size), method=method, color=0)


def _border(a: np.ndarray) -> np.ndarray:
    """The outer 5% of an (H, W) or (H, W, C) array on every side, as (pixels, ...)."""
    h, w = a.shape[:2]
    bh, bw = max(1, h // 20), max(1, w // 20)
    return np.concatenate([a[:bh].reshape(-1, *a.shape[2:]), a[-bh:].reshape(-1, *a.shape[2:]),
                           a[:, :bw].reshape(-1, *a.shape[2:]), a[:, -bw:].reshape(-1, *a.shape[2:])])


def light_background(im: Image.Image) -> bool:
    """True when the image's border (its outer 5% on every side) is mostly light: ink on
    paper, a scan, a drawing on white. Judged on luma, median over the border pixels."""
    return float(np.median(_border(np.asarray(im.convert("L"), dtype=np.uint8)))) > 127.5


def apply_polarity(im: Image.Image, polarity: str) -> Image.Image:
    """``keep``: as is; ``invert``: 255 - pixels; ``auto``: inverted when its background is light,
    so that strokes/objects are bright on dark, as the Omniglot reader gives (``decode_png``)."""
    if polarity == "invert" or (polarity == "auto" and light_background(im)):
        return ImageOps.invert(im)
    return im


# The Omniglot training characters (at 20 px): the larger side of the ink's bounding box is
# 0.30-0.90 of the image side for 97.4% of them (1.7% below, 0.8% above; median 0.65).
INK_FRAME_RANGE = (0.3, 0.9)
INK_FRAME_TARGET = 0.65


def ink_box(im: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the ink: the pixels that differ from the background (the
    border's median luma) by more than 30% of the largest difference and by more than the
    border's own spread (3 median absolute deviations: noise or texture is not ink). None where
    there is no plain background to tell ink from: an image of one tone, or a border that is
    mostly "ink" (a photo, a texture, a picture filling its frame)."""
    luma = np.asarray(im.convert("L"), dtype=np.int16)
    border = _border(luma)
    background = int(np.median(border))
    spread = float(np.median(np.abs(border - background)))
    diff = np.abs(luma - background)
    if diff.max() < 16:
        return None
    threshold = max(0.3 * float(diff.max()), 3 * spread, 8.0)
    if (np.abs(border - background) > threshold).mean() > 0.25:
        return None
    ys, xs = np.nonzero(diff > threshold)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def apply_ink_frame(im: Image.Image, frame: str) -> Image.Image:
    """``keep``: as is. ``auto``: when the ink's bounding box spans more than 0.9 or less than
    0.3 of the image's larger side (a digit filling its box, a small mark on a large page),
    crop to the ink and centre it on a square of the background colour with the Omniglot
    characters' median margin (the box 0.65 of the side); images already framed like them
    are untouched. Raw-pixel models read strokes at the scale they were trained on."""
    if frame != "auto":
        return im
    box = ink_box(im)
    if box is None:
        return im
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    if INK_FRAME_RANGE[0] <= side / max(im.size) <= INK_FRAME_RANGE[1]:
        return im
    canvas_side = max(1, round(side / INK_FRAME_TARGET))
    fill = np.median(_border(np.asarray(im)), axis=0).astype(np.uint8)
    canvas = Image.new(im.mode, (canvas_side, canvas_side), tuple(int(v) for v in np.atleast_1d(fill))
                       if im.mode != "L" else int(fill))
    canvas.paste(im.crop(box), ((canvas_side - (right - left)) // 2, (canvas_side - (bottom - top)) // 2))
    return canvas


def decode_image(data: bytes, image_size: int, channels: int, resize: str = "pad",
                 max_pixels: int = MAX_PIXELS, polarity: str = "keep",
                 ink_frame: str = "keep") -> tuple[np.ndarray, dict]:
    """Image file bytes -> ((channels, image_size, image_size) uint8, info).

    info: {"size": [w, h] as stored, "mode": PIL mode, "format": PIL format}. Raises
    ``BadImage`` (a ``DataError``) for anything unusable; the header's declared size is
    checked against ``max_pixels`` before any pixel is decoded.
    """
    if resize_problem(resize):
        raise UserError(resize_problem(resize))
    with warnings.catch_warnings():
        # PIL's own DecompressionBombWarning and EXIF chatter: we check and report ourselves.
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data))
        except MemoryError as exc:
            raise BadImage("unreadable", "out of memory while decoding (not cached; tried again next run)",
                           transient=True) from exc
        except Image.UnidentifiedImageError as exc:
            raise BadImage("unreadable", "not an image format PIL can read (unknown or damaged header)") from exc
        except Image.DecompressionBombError as exc:
            raise BadImage("too-large", f"declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels "
                           "(decompression bomb?); not decoded") from exc
        except Exception as exc:  # PIL raises many types for hostile bytes
            raise BadImage("unreadable", f"not a readable image ({_short(exc)})") from exc
        try:
            w, h = (int(v) for v in im.size)
            if w < 1 or h < 1:
                raise BadImage("unreadable", f"image has an empty size {w}x{h}")
            if w * h > max_pixels:
                raise BadImage("too-large", f"declares {w}x{h} = {w * h / 1e6:.0f} megapixels, over the "
                               f"{max_pixels / 1e6:.0f}-megapixel limit (decompression bomb?); not decoded")
            info = {"size": [w, h], "mode": str(im.mode), "format": str(im.format or "?")}
            if im.format == "JPEG":  # let libjpeg decode at 1/2..1/8 scale when that is still large enough
                im.draft("L" if channels == 1 else "RGB", (image_size, image_size))
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
                pass
            # polarity before the resize, so letterbox padding is always black
            im = _resize(apply_ink_frame(apply_polarity(_to_mode(im, channels), polarity), ink_frame), image_size,
                         resize)
            arr = np.asarray(im, dtype=np.uint8)
        except BadImage:
            raise
        except MemoryError as exc:  # the machine's state, not the file's: never cached as corrupt
            raise BadImage("unreadable", "out of memory while decoding (not cached; tried again next run)",
                           transient=True) from exc
        except Exception as exc:
            raise BadImage("unreadable", f"corrupt or truncated image ({_short(exc)})") from exc
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape != (channels, image_size, image_size):
        raise BadImage("unreadable", f"decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr), info


def read_image_file(path: Path, image_size: int, channels: int, resize: str,
                    max_pixels: int = MAX_PIXELS, polarity: str = "keep",
                    ink_frame: str = "keep") -> tuple[np.ndarray, dict, str]:
    """(image, info, sha256 hex) of one file; ``BadImage`` if unusable. Only a regular file of
    at most ``MAX_FILE_BYTES`` is read (a device such as /dev/zero or a FIFO is refused unopened)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise BadImage("unreadable", "not a regular file (a device, FIFO or socket); not read")
        if st.st_size > MAX_FILE_BYTES:
            raise BadImage("too-large", f"file is {st.st_size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB "
                           "limit; not read")
        data = read_regular_file(path, MAX_FILE_BYTES, "image")
    except BadImage:
        raise
    except InputError as exc:
        raise BadImage("unreadable", str(exc)) from exc
    except OSError as exc:
        raise BadImage("unreadable", f"cannot read file ({exc.strerror or _short(exc)})",
                       transient=exc.errno in TRANSIENT_ERRNOS) from exc
    except MemoryError as exc:
        raise BadImage("unreadable", "out of memory while reading (not cached; tried again next run)",
                       transient=True) from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        if not data:
            raise BadImage("unreadable", "empty file")
        image, info = decode_image(data, image_size, channels, resize, max_pixels, polarity, ink_frame)
    except BadImage as exc:
        exc.digest = digest  # the decode cache is keyed on the bytes that were decoded (or failed to)
        raise
    return image, info, digest


# ---------------------------------------------------------------------------- scanning

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


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def walk_images(folder: Path, root: Path, problems: list[Problem], visited: set, depth: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), not following links out of ``root``,
    at most ``MAX_FOLDER_DEPTH`` folder levels deep (a deeper folder is a ``too-deep`` problem)."""
    if depth > MAX_FOLDER_DEPTH:
        problems.append(Problem("too-deep", _rel(folder, root), PROBLEM_KINDS["too-deep"]))
        return []
    try:
        real = folder.resolve()
        if real in visited:  # a link looping back into an already-walked folder
            return []
        visited.add(real)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        problems.append(Problem("unreadable", _rel(folder, root), f"cannot list folder ({exc.strerror or _short(exc)})"))
        return []
    files = []
    for entry in entries:
        if entry.name.startswith("."):  # .DS_Store, .ipynb_checkpoints, editor temp files
            continue
        path = Path(entry.path)
        if entry.is_symlink() and (bad := _link_problem(path, root, _rel(path, root))):
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
            problems.append(Problem("not-image", _rel(path, root),
                                    f"not an image file (extension not one of {' '.join(IMAGE_EXTENSIONS)})"))
        else:
            problems.append(Problem("unreadable", _rel(path, root), "not a regular file (broken link?)"))
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
        raise DataError(f"{option} {given}: cannot list the folder ({exc.strerror or _short(exc)})") from exc
    # A class folder that is a link to another class folder: the real folder keeps its images
    # (whatever the names' order), the link is reported as such.
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


def _stat_stamp(f: Path) -> str:
    """The key of a file whose content could not be read: its size, times and inode."""
    try:
        st = f.stat()
        return f"unread:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    except OSError:
        return "missing"


def _probe_images() -> list[bytes]:
    """A few fixed PNG files that exercise every reading rule: a digit-like stroke bilinear-enlarged to
    fill its frame (ink frame, its threshold on soft edges), a small mark on a large page (BOX
    reduction, the tiny-ink branch), a plain character framed like Omniglot's and a colour texture."""
    ring = np.zeros((8, 8))
    ring[1:7, 2:6], ring[2:6, 3:5] = 16, 0
    ring[0, 3:5] = ring[7, 3:5] = 9
    digit = Image.fromarray((255 - ring * 255 / 16).astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
    page = np.full((96, 128), 240, np.uint8)
    page[40:46, 60:66] = 20
    char = np.zeros((28, 28), np.uint8)
    char[6:22, 9:12] = char[6:9, 9:20] = 255
    texture = (np.arange(20 * 24 * 3).reshape(20, 24, 3) * 37 % 256).astype(np.uint8)
    out = []
    for pixels in (np.asarray(digit), page, char, texture):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@functools.lru_cache(maxsize=None)
def reader_fingerprint(image_size: int, channels: int, resize: str, polarity: str, ink_frame: str) -> str:
    """A digest of what ``decode_image`` makes of the probe images with these settings: part of the
    decode cache's key. The settings' names alone did not say how they are applied: a cache written
    while the ink-frame rule was being changed was served later under the same name (issue 27: the
    digits number that moved). Now other reading rules, or a Pillow that resamples differently,
    give another key and a fresh decode."""
    digest = hashlib.sha256()
    for data in _probe_images():
        try:
            digest.update(decode_image(data, image_size, channels, resize, MAX_PIXELS, polarity, ink_frame)[0].tobytes())
        except (BadImage, UserError) as exc:  # a setting the reader refuses: its message is the reading
            digest.update(str(exc).encode())
    return digest.hexdigest()[:16]


def _cache_paths(root: Path, classes: dict[str, list[Path]], image_size: int, channels: int,
                 resize: str, max_pixels: int, polarity: str = "keep", ink_frame: str = "keep",
                 stamps: dict | None = None) -> tuple[Path, str]:
    """(cache file, prefix shared by every cache of this folder and settings).

    The key holds every file's class, path and SHA-256 of its bytes: sizes and times can stay
    the same while pixels change (fixed-size BMP/PGM/TIFF re-created with the same times) or
    files move between classes (``mv`` keeps both), so only the content is trusted.
    ``stamps`` (path -> SHA-256 or None): the digests of the reads that were decoded, so a
    cache is keyed on the very bytes that filled it (a file changed between the look-up and
    the decode files the result under the new content, never under the old)."""
    settings = json.dumps([CACHE_VERSION, str(root), image_size, channels, resize, max_pixels]
                          + ([] if polarity == "keep" else [polarity]) + ([] if ink_frame == "keep" else
                                                                          [f"ink-frame-{ink_frame}"])
                          + [reader_fingerprint(image_size, channels, resize, polarity, ink_frame)])
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
            listing.update(f"{name}\0{_rel(f, root)}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    prefix = "folder-" + hashlib.sha256(settings.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return cache_dir() / f"{prefix}-{listing.hexdigest()[:16]}.npz", prefix


def _load_cache(path: Path):
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


def _save_cache(path: Path, prefix: str, bank: ClassBank, digests, problems, stats) -> None:
    meta = json.dumps({"names": bank.names, "problems": [asdict(p) for p in problems], "stats": stats})

    def write(f):
        np.savez(f, images=bank.images, counts=bank.counts, digests=np.asarray(digests, dtype="<U64"),
                 meta=np.array(meta))
    if not cache_files.write(path, write):
        return  # a read-only cache only costs the decode next time
    for old in path.parent.glob(f"{prefix}-*.npz"):  # the folder changed: drop the stale decode (only the cache's own)
        if old != path and cache_files.is_owned(old):
            old.unlink(missing_ok=True)


def load_folder(root: str | os.PathLike, image_size: int = 20, channels: int = 1, resize: str = "pad", *,
                progress: bool = True, cache: bool = True, option: str = "--data-root",
                max_pixels: int = MAX_PIXELS, polarity: str = "keep", ink_frame: str = "keep") -> FolderData:
    """Decode (or load from the cache) every usable image of a class-per-folder dataset."""
    if resize_problem(resize):
        raise UserError(resize_problem(resize))
    root, classes, problems = scan_folder(root, option)
    class_folders = sorted(set(classes) | {p.path.rstrip("/") for p in problems if p.kind == "empty-class"})
    cache_path, prefix = _cache_paths(root, classes, image_size, channels, resize, max_pixels, polarity, ink_frame)
    if cache:
        cached = _load_cache(cache_path) if cache_path.exists() else None
        if cached is not None:
            bank, digests, decode_problems, stats = cached
            return FolderData(root, bank, digests, problems + decode_problems, stats, class_folders, True)

    decoded, stats, decode_problems, transient = _decode_classes(root, classes, image_size, channels, resize,
                                                                 max_pixels, polarity, progress, ink_frame)
    drop = _drop_duplicates(decoded, decode_problems)
    bank, digests_arr = _bank_of(decoded, drop, decode_problems, image_size, channels)
    if cache and not transient:  # keyed on the bytes just decoded, not on the look-up's read
        cache_path, prefix = _cache_paths(root, classes, image_size, channels, resize, max_pixels, polarity, ink_frame,
                                          stamps=decoded.stamps)
        _save_cache(cache_path, prefix, bank, digests_arr, decode_problems, stats)
    return FolderData(root, bank, digests_arr, problems + decode_problems, stats, class_folders, False)


class _Decoded(dict):
    """``{class: [(rel, image, digest)]}``, and ``stamps``: path -> SHA-256 of the bytes read
    (None where the content could not be read)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.stamps: dict[Path, str | None] = {}


def _decode_classes(root: Path, classes: dict[str, list], image_size: int, channels: int, resize: str,
                    max_pixels: int, polarity: str, progress: bool, ink_frame: str = "keep"):
    """Every file of every class decoded: ``({class: [(rel, image, digest)]}, {class: stats},
    problems, transient)``; ``transient``: a failure that says nothing about the file (the
    result must not be cached)."""
    problems: list[Problem] = []
    jobs = [(name, f) for name, files in classes.items() for f in files]
    iterator = jobs
    if progress:
        from tqdm import tqdm
        iterator = tqdm(jobs, desc=f"decoding {root.name} at {image_size}px (once)", unit="img", leave=False)
    decoded = _Decoded({name: [] for name in classes})
    stats: dict[str, dict] = {}
    transient = False
    for name, path in iterator:
        rel = _rel(path, root)
        try:
            image, info, digest = read_image_file(path, image_size, channels, resize, max_pixels, polarity, ink_frame)
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


def decode_uploads(files: list[tuple[str, bytes]], image_size: int, channels: int, resize: str = "pad", *,
                   max_pixels: int = MAX_PIXELS, polarity: str = "keep", ink_frame: str = "keep",
                   option: str = "support") -> FolderData:
    """``load_folder`` for a folder given as bytes in memory (the web app's uploads): ``files`` are
    (relative path ``<class>/.../<image>``, file bytes). The same decoding, checks and problems
    (stray files, non-images, unreadable, duplicates, empty classes); nothing is read from or
    written to disk, nothing cached."""
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
                image, info = decode_image(data, image_size, channels, resize, max_pixels, polarity, ink_frame)
            except BadImage as exc:
                problems.append(Problem(exc.kind, rel, str(exc)))
                continue
            decoded[name].append((rel, image, hashlib.sha256(data).hexdigest()))
            _add_stats(stats, name, info)
    for s in stats.values():
        s["modes"].sort()
        s["formats"].sort()
    drop = _drop_duplicates(decoded, problems)
    bank, digests = _bank_of(decoded, drop, problems, image_size, channels)
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


def _bank_of(decoded: dict[str, list], drop: set[str], problems: list[Problem], image_size: int,
             channels: int) -> tuple[ClassBank, np.ndarray]:
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
        ClassBank(np.zeros((0, channels, image_size, image_size), np.uint8), np.zeros(0, np.int64),
                  np.zeros(0, np.int64), [])
    return bank, np.asarray(digests, dtype="<U64")


# ---------------------------------------------------------------------------- episode needs

def too_few_images(bank: ClassBank, instances: int) -> list[Problem]:
    """One problem per class with fewer than ``instances`` usable images."""
    return [Problem("too-few-images", name + "/",
                    f"{int(n)} usable image(s); an episode with {instances_option(instances)} needs {instances} "
                    f"(class skipped; lower {lower_instances()} or add images)")
            for name, n in zip(bank.names, bank.counts) if n < instances]


def drop_small_classes(bank: ClassBank, instances: int, where: str, report=warn) -> ClassBank:
    small = too_few_images(bank, instances)
    for p in small:
        report(f"skipped {where} class {p.describe()}")
    if not small:
        return bank
    return bank.subset([i for i, n in enumerate(bank.counts) if n >= instances])


def drop_digests(data: FolderData, digests: set[str]) -> ClassBank:
    """``data.bank`` without the images whose file digest is in ``digests`` (empty classes removed)."""
    groups, names = [], []
    for c, name in enumerate(data.bank.names):
        lo, hi = data.bank.offsets[c], data.bank.offsets[c] + data.bank.counts[c]
        keep = [i for i in range(lo, hi) if data.digests[i] not in digests]
        if keep:
            groups.append(data.bank.images[keep])
            names.append(name)
    return ClassBank.from_groups(groups, names)


# ---------------------------------------------------------------------------- class split

def parse_test_classes(spec) -> tuple[str, object] | None:
    """``--test-classes`` -> None, ("all", None), ("fraction", f) or ("names", [...])."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    text = str(spec).strip()
    if text.lower() == "all":
        return ("all", None)
    try:
        fraction = float(text)
    except ValueError:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise UserError(f"--test-classes {text!r} names no classes") from None
        return ("names", names)
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--test-classes {text}: a fraction must be between 0 and 1 (e.g. 0.3), "
                        "or give class names separated by commas")
    return ("fraction", fraction)


def choose_test_classes(names: list[str], spec, seed: int, where: str = "the folder") -> list[str]:
    """Held-out class names (sorted) for a parsed ``--test-classes`` spec; see the module docstring."""
    parsed = spec if isinstance(spec, tuple) or spec is None else parse_test_classes(spec)
    kind, value = parsed if parsed is not None else ("fraction", DEFAULT_TEST_FRACTION)
    if kind == "all":
        return sorted(names)
    if kind == "names":
        missing = [n for n in value if n not in names]
        if missing:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise DataError(f"--test-classes names {missing[0]!r}, which is not a usable class of {where} "
                            f"(classes: {shown})")
        return sorted(set(value))
    if len(names) < 2:
        raise DataError(f"{where} has {len(names)} usable class(es); a class split needs at least 2 "
                        "(or give held-out classes in a separate --test-root folder)")
    held = max(1, min(len(names) - 1, int(value * len(names) + 0.5)))
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode("utf-8", "surrogateescape")).hexdigest())
    return sorted(ranked[:held])


def report_problems(data: FolderData, option: str, report=warn) -> None:
    for p in data.problems:
        report(f"skipped {option} {p.describe()}")


def parse_validation_classes(spec) -> tuple[str, object] | None:
    """``--validation-classes`` -> None (the default fraction), ("none", None), ("fraction", f) or ("names", [...])."""
    if spec is not None and str(spec).strip().lower() in ("none", "0", "0.0"):
        return ("none", None)
    parsed = parse_test_classes(spec)
    if parsed is not None and parsed[0] == "all":
        raise UserError("--validation-classes all would leave nothing to train on; give a fraction, names or none")
    return parsed


def choose_validation_classes(names: list[str], spec, seed: int, test: set[str], where: str) -> list[str]:
    """Validation class names (sorted), drawn from the classes that are not test classes."""
    parsed = parse_validation_classes(spec)
    kind, value = parsed if parsed is not None else ("fraction", DEFAULT_VALIDATION_FRACTION)
    rest = [n for n in names if n not in test]
    if kind == "none":
        return []
    if kind == "names":
        bad = [n for n in value if n not in rest]
        if bad:
            why = "a test class" if bad[0] in test else f"not a usable class of {where}"
            raise DataError(f"--validation-classes names {bad[0]!r}, which is {why}")
        chosen = sorted(set(value))
    else:
        count = min(len(rest) - 1, int(value * len(names) + 0.5))
        ranked = sorted(rest, key=lambda n: hashlib.sha256(
            f"validation/{seed}/{n}".encode("utf-8", "surrogateescape")).hexdigest())
        chosen = sorted(ranked[:max(0, count)])
    if len(chosen) >= len(rest):
        raise DataError(f"--validation-classes leaves no class of {where} to train on")
    return chosen


def _digests_by_class(data: FolderData) -> dict[str, list[str]]:
    b = data.bank
    return {n: data.digests[b.offsets[c]:b.offsets[c] + b.counts[c]].tolist() for c, n in enumerate(b.names)}


def _subset_names(bank: ClassBank, names) -> ClassBank:
    names = set(names)
    return bank.subset([i for i, n in enumerate(bank.names) if n in names])


def load_folder_banks(cfg: Config, progress: bool = True, report=warn) -> tuple[ClassBank, ClassBank]:
    """(meta-training bank, held-out test bank) of a folder dataset, classes disjoint."""
    parts = load_folder_parts(cfg, progress, report)
    return parts.train, parts.test


def reader_settings(cfg: Config) -> dict:
    """How the folder reader decodes images for ``cfg``: image_size, channels, resize, polarity, ink_frame.

    Raw-pixel encoders read the configured size/channels with ``data.polarity``; a backbone
    reads RGB at its own input size, the photo as it is (ImageNet features know light
    backgrounds)."""
    d = cfg.data
    pixels_resize = "pad" if d.resize in ("auto", "backbone") else d.resize
    if is_backbone(cfg.model.encoder) and cfg.model.encoder.startswith("fewshot:"):
        from fewshot_mann.models.backbones import preprocessing  # grayscale, trained on bright strokes: as pixels
        return {"image_size": preprocessing(cfg.model.encoder).image_size, "channels": 1, "resize": pixels_resize,
                "polarity": d.polarity, "ink_frame": d.ink_frame}
    if is_backbone(cfg.model.encoder):
        from fewshot_mann.models.backbones import preprocessing
        prep = preprocessing(cfg.model.encoder)
        resize = f"fraction:{prep.crop_pct:g}" if d.resize in ("auto", "backbone") else d.resize
        return {"image_size": prep.image_size, "channels": 3, "resize": resize, "polarity": "keep", "ink_frame": "keep"}
    return {"image_size": d.image_size, "channels": d.channels, "resize": pixels_resize, "polarity": d.polarity,
            "ink_frame": d.ink_frame}


def load_folder_parts(cfg: Config, progress: bool = True, report=warn, recorded: dict | None = None) -> SplitBanks:
    """Training, validation and test banks of a folder dataset, classes pairwise disjoint.

    ``recorded``: the class lists a checkpoint trained with (``{"train", "validation", "test"}``);
    given, the test and validation classes are those, whatever the folder holds now (classes
    added since then never move a trained class into the held-out set).
    Skippable problems are reported through ``report`` (one line per file or class);
    unskippable ones raise ``DataError``/``UserError`` with one line saying what to do.
    """
    d, e = cfg.data, cfg.episodes
    if not d.data_root:
        raise UserError("--dataset folder needs --data-root DIR (a folder with one sub-folder of images per class)")
    spec = parse_test_classes(d.test_classes)
    if d.test_root and spec is not None:
        raise UserError("give held-out classes either as a --test-root folder or with --test-classes, not both")
    # a backbone's inputs are large and only feed the (cached) features: not cached themselves
    kw = dict(**reader_settings(cfg), progress=progress, cache=not is_backbone(cfg.model.encoder))
    data = load_folder(d.data_root, option="--data-root", **kw)
    report_problems(data, "--data-root", report)
    digests = _digests_by_class(data)
    if d.test_root:
        held = load_folder(d.test_root, option="--test-root", **kw)
        report_problems(held, "--test-root", report)
        both = sorted(set(data.bank.names) & set(held.bank.names))
        if both:
            raise DataError(f"class {both[0]!r} is in both --data-root and --test-root ({len(both)} shared); "
                            "held-out classes must be ones the model never trained on")
        shared = set(data.digests.tolist()) & set(held.digests.tolist())
        if shared:
            report(f"{len(shared)} file(s) appear in both --data-root and --test-root (label leakage); skipped "
                   "from both (run `fewshot-mann inspect` on each folder to list them)")
        pool, test_bank = drop_digests(data, shared), drop_digests(held, shared)
        digests = {n: [x for x in v if x not in shared] for n, v in digests.items()}
        where = f"--test-root {d.test_root}"
        test_names: set[str] = set()
    else:
        pool = data.bank
        if recorded is not None:
            test_names = set(recorded.get("test", [])) & set(pool.names)
            gone = len(set(recorded.get("test", []))) - len(test_names)
            if gone:
                report(f"{gone} of the checkpoint's {len(recorded['test'])} test classes are no longer in "
                       f"{d.data_root}; scoring the other {len(test_names)}")
            how = "the checkpoint's recorded test classes"
        else:
            test_names = set(choose_test_classes(pool.names, spec, cfg.train.seed, f"--data-root {d.data_root}"))
            how = f"--test-classes {d.test_classes if spec is not None else f'{DEFAULT_TEST_FRACTION} (the default)'}"
        test_bank = _subset_names(pool, test_names)
        where = f"{how} of the {pool.num_classes} classes in {d.data_root}"
    if recorded is not None:
        val_names = set(recorded.get("validation", [])) & set(pool.names) - test_names
        train_names = set(recorded.get("train", [])) & set(pool.names)
    elif len(test_names) == pool.num_classes:  # --test-classes all: nothing is trained on
        val_names, train_names = set(), set()
    else:
        val_names = set(choose_validation_classes(pool.names, d.validation_classes, cfg.train.seed, test_names,
                                                  f"--data-root {d.data_root}"))
        train_names = set(pool.names) - test_names - val_names
    train_bank = drop_small_classes(_subset_names(pool, train_names), e.instances, "--data-root", report)
    val_bank = drop_small_classes(_subset_names(pool, val_names), e.instances, "validation", report)
    held_before = test_bank.num_classes
    test_bank = drop_small_classes(test_bank, e.instances, "held-out", report)
    if test_bank.num_classes < e.ways:
        small = held_before - test_bank.num_classes
        raise DataError(
            f"--ways {e.ways} needs {e.ways} held-out classes with at least {e.instances} images each ({instances_name()}), "
            f"but {where} gives {test_bank.num_classes}"
            + (f" ({small} more have fewer than {e.instances} images)" if small else "")
            + f"; hold out more classes, lower --ways or {lower_instances()}, or add images "
            "(`fewshot-mann inspect DIR` lists what is usable)")
    if val_bank.num_classes == 0:
        val_bank = empty_bank(d.channels, d.image_size)
    return SplitBanks(train_bank, val_bank, test_bank, digests)


def split_record(cfg: Config, train_bank: ClassBank, test_bank: ClassBank, val_bank: ClassBank | None = None) -> dict:
    """The class split as JSON-ready data: class names and image counts only, never file names."""
    d = cfg.data
    return {
        "dataset": "folder",
        "data_root": d.data_root,
        "test_root": d.test_root,
        "test_classes": d.test_classes if d.test_classes is not None else DEFAULT_TEST_FRACTION,
        "seed": cfg.train.seed,
        "image_size": d.image_size,
        "channels": d.channels,
        "resize": d.resize,
        "validation_classes": d.validation_classes if d.validation_classes is not None
        else DEFAULT_VALIDATION_FRACTION,
        "train": {n: int(c) for n, c in zip(train_bank.names, train_bank.counts)},
        "validation": {n: int(c) for n, c in zip(val_bank.names, val_bank.counts)} if val_bank is not None else {},
        "test": {n: int(c) for n, c in zip(test_bank.names, test_bank.counts)},
    }


def write_split(path: str | os.PathLike, cfg: Config, train_bank: ClassBank, test_bank: ClassBank,
                val_bank: ClassBank | None = None) -> None:
    atomic_write_json(path, split_record(cfg, train_bank, test_bank, val_bank))
