"""Decoding: one image file's bytes -> ``(channels, image_size, image_size)`` uint8, the way every
reader of the package sees an image (folders, ``predict``'s queries, the web app's uploads).

Files with torchvision's image extensions (``IMG_EXTENSIONS``: PNG, JPEG, BMP, TIFF, WebP,
PPM/PGM, and GIF's first frame) are decoded by PIL; any mode (1-bit, grayscale, RGB, RGBA,
palette, 16-bit, float) and any size or aspect:

- orientation: the EXIF orientation tag of phone/camera photos is applied;
- transparency (RGBA, LA, palette with a transparent colour) is composited onto black;
- 16-bit, 32-bit and float grayscale are stretched from their own min..max to 0..255
  (medical exports rarely use the full 16-bit range, so a fixed /257 would leave them black);
- ``channels`` 1 = grayscale (ITU-R 601 luma), 3 = RGB (grayscale replicated);
- ``polarity`` and ``ink_frame``: raw-pixel models read bright strokes on dark at Omniglot's scale;
- ``resize``: ``pad`` (default: the whole image, scaled to fit and letterboxed with black,
  so nothing at the border is lost), ``crop`` (centre square, then scaled), ``stretch``
  (scaled to a square, aspect not kept) or ``fraction:F`` (a backbone's eval transform).
  Area averaging when shrinking, bicubic when enlarging.

Hardening: an image whose header declares more than ``max_pixels`` pixels is refused before
decoding (decompression bombs); files over ``MAX_FILE_BYTES`` are not read; a device or FIFO
is refused unopened.

``ImageReader`` holds the settings as one frozen value, resolved once from the config
(``models.inputs.image_reader``): ``.read(path)``, ``.decode(bytes)``, ``.cache_key()``.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS

from fewshot_mann.config import RESIZE_POLICIES, DataConfig
from fewshot_mann.errors import DataError, UserError
from fewshot_mann.fileio import InputError, read_regular_file

IMAGE_EXTENSIONS = tuple(IMG_EXTENSIONS) + (".gif",)  # GIF: its first frame (PIL decodes it)
MAX_PIXELS = 50_000_000  # refuse images declaring more (a 50 MP RGBA decode is already 200 MB)
MAX_FILE_BYTES = 256 * 2**20
TRANSIENT_ERRNOS = {errno.EIO, errno.ENOMEM, errno.EINTR, errno.EAGAIN, errno.ENFILE, errno.EMFILE, errno.ETIMEDOUT}
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class BadImage(DataError):
    """One image file that cannot be used; ``kind`` is a ``PROBLEM_KINDS`` key. ``transient``:
    the failure says nothing about the file (out of memory, an I/O hiccup), so it is never
    cached: the next run tries the file again."""

    def __init__(self, kind: str, message: str, transient: bool = False):
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.digest: str | None = None  # SHA-256 of the bytes that failed to decode, where they were read


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


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
    ``models.inputs.image_reader`` resolves, or ``fraction:F``: shorter side to size / F, centre crop)."""
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
            raise BadImage("unreadable", f"not a readable image ({short_error(exc)})") from exc
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
            raise BadImage("unreadable", f"corrupt or truncated image ({short_error(exc)})") from exc
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
        raise BadImage("unreadable", f"cannot read file ({exc.strerror or short_error(exc)})",
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


@dataclass(frozen=True)
class ImageReader:
    """How an image file becomes model input, as one value: ``(channels, image_size, image_size)``
    uint8 by ``resize`` (a policy ``decode_image`` applies, never ``auto``/``backbone``), with
    ``polarity`` and ``ink_frame`` (raw-pixel readers only) and at most ``max_pixels`` decoded."""

    image_size: int = 20
    channels: int = 1
    resize: str = "pad"
    polarity: str = "keep"
    ink_frame: str = "keep"
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        if resize_problem(self.resize):
            raise UserError(resize_problem(self.resize))

    def decode(self, data: bytes) -> tuple[np.ndarray, dict]:
        """File bytes -> (image, info); see ``decode_image``."""
        return decode_image(data, self.image_size, self.channels, self.resize, self.max_pixels, self.polarity,
                            self.ink_frame)

    def read(self, path: Path) -> tuple[np.ndarray, dict, str]:
        """(image, info, sha256 hex of the bytes) of one file; see ``read_image_file``."""
        return read_image_file(Path(path), self.image_size, self.channels, self.resize, self.max_pixels,
                               self.polarity, self.ink_frame)

    def cache_key(self) -> list:
        """What a decoded image depends on besides the file's bytes (the decode cache's key): the settings
        and ``reader_fingerprint``, what the reader makes of fixed probe images (the settings' names alone
        do not say how they are applied)."""
        return ([self.image_size, self.channels, self.resize, self.max_pixels]
                + ([] if self.polarity == "keep" else [self.polarity])
                + ([] if self.ink_frame == "keep" else [f"ink-frame-{self.ink_frame}"])
                + [reader_fingerprint(self.image_size, self.channels, self.resize, self.polarity, self.ink_frame)])


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


def pixel_reader(d: DataConfig, image_size: int | None = None, channels: int | None = None) -> ImageReader:
    """The reader of a raw-pixel model: the configured size, channels, polarity and ink frame, the whole
    image letterboxed unless ``--resize`` says otherwise (``image_size``/``channels``: a grayscale
    backbone's own, which reads as raw pixels do)."""
    return ImageReader(image_size or d.image_size, channels or d.channels,
                       "pad" if d.resize in ("auto", "backbone") else d.resize, d.polarity, d.ink_frame)
