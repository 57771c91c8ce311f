"""Synthetic class-per-folder image datasets for tests and docs: coloured shapes and textures.

Class k is one shape/texture in one colour; each image moves, scales and recolours it a
little, on a noisy background, at a random size and aspect, saved in a rotating mix of
formats (PNG, JPEG, BMP, TIFF, WebP) and modes (RGB, RGBA, palette, grayscale, 16-bit).
``with_problems=True`` adds what a real folder collects: a truncated image, a text file,
an empty class, the same file in two classes, a header-only "decompression bomb", a file
outside any class folder and a link pointing out of the folder.

Run as a script to write one: ``python tests/helpers/images.py OUT [--classes 8] [--per-class 10]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "stripes", "checker", "dots", "diamond", "bars")
COLOURS = ((220, 40, 40), (40, 170, 60), (50, 80, 220), (230, 200, 30), (170, 60, 200), (30, 190, 200),
           (240, 130, 20), (120, 120, 120))
# (extension, PIL mode) cycled over a class's images
VARIANTS = (("png", "RGB"), ("jpg", "RGB"), ("bmp", "RGB"), ("tif", "RGB"), ("webp", "RGB"),
            ("png", "RGBA"), ("png", "P"), ("png", "I;16"), ("tiff", "I;16"), ("jpeg", "L"),
            ("webp", "RGBA"), ("bmp", "P"), ("tif", "RGBA"), ("png", "L"), ("png", "LA"))
# Colour is half of what tells these classes apart; grey variants make the task harder.
COLOUR_VARIANTS = tuple(v for v in VARIANTS if v[1] not in ("L", "LA", "I;16"))


COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "grey")


def class_name(k: int) -> str:
    """80 distinct classes: shape k mod 10 in colour (k div 10 + k) mod 8."""
    return f"{SHAPES[k % len(SHAPES)]}_{COLOUR_NAMES[(k // len(SHAPES) + k) % len(COLOURS)]}"


def draw(k: int, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB picture of class ``k``: its shape in its colour, jittered, on a noisy background."""
    bg = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    im = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(im)
    colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[(k // len(SHAPES) + k) % len(COLOURS)])
    side = min(width, height)
    r = side * rng.uniform(0.28, 0.4)
    cx = width / 2 + rng.uniform(-0.08, 0.08) * side
    cy = height / 2 + rng.uniform(-0.08, 0.08) * side
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = SHAPES[k % len(SHAPES)]
    lw = max(1, int(side / 10))
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        d.line([(cx - r, cy), (cx + r, cy)], fill=colour, width=lw)
        d.line([(cx, cy - r), (cx, cy + r)], fill=colour, width=lw)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=lw)
    elif shape == "stripes":
        for x in range(int(cx - r), int(cx + r), 2 * lw):
            d.rectangle((x, cy - r, x + lw - 1, cy + r), fill=colour)
    elif shape == "checker":
        step = max(2, int(r / 2))
        for i, x in enumerate(range(int(cx - r), int(cx + r), step)):
            for j, y in enumerate(range(int(cy - r), int(cy + r), step)):
                if (i + j) % 2 == 0:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=colour)
    elif shape == "dots":
        for dx in (-0.5, 0.5):
            for dy in (-0.5, 0.5):
                d.ellipse((cx + dx * r - r / 4, cy + dy * r - r / 4, cx + dx * r + r / 4, cy + dy * r + r / 4), fill=colour)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    else:  # bars
        for y in range(int(cy - r), int(cy + r), 2 * lw):
            d.rectangle((cx - r, y, cx + r, y + lw - 1), fill=colour)
    return im


def save_variant(im: Image.Image, path_stem: Path, variant: tuple[str, str]) -> Path:
    ext, mode = variant
    path = path_stem.with_suffix("." + ext)
    if mode == "I;16":  # 12-bit data in a 16-bit container, as medical exports often are
        a = np.asarray(im.convert("L"), dtype=np.uint16) * 16
        out = Image.fromarray(a)
        if out.mode != "I;16":
            out = Image.fromarray(a, "I;16")
    elif mode == "P":
        out = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode in ("RGBA", "LA"):
        out = im.convert(mode)
        alpha = Image.new("L", im.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, im.size[0] // 6, im.size[1] - 1), fill=0)  # a transparent strip
        out.putalpha(alpha)
    else:
        out = im.convert(mode)
    kw = {"quality": 90} if ext in ("jpg", "jpeg", "webp") else {}
    out.save(path, **kw)
    return path


def bomb_png(width: int = 10000, height: int = 6000) -> bytes:
    """A valid PNG header declaring a huge image, with almost no data (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def make_image_folder(root, classes: int = 6, per_class: int = 8, seed: int = 0, size_range=(24, 80),
                      first_class: int = 0, with_problems: bool = False, variants=VARIANTS) -> dict:
    """Write a dataset folder; returns {"root", "classes": [names], "problems": {kind: relative path}}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for k in range(first_class, first_class + classes):
        name = class_name(k)
        names.append(name)
        (root / name).mkdir(exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
            save_variant(draw(k, rng, w, h), root / name / f"img{i:03d}", variants[(i + 3 * k) % len(variants)])
    problems = {}
    if with_problems:
        a, b = names[0], names[1]
        good = sorted((root / a).glob("img000.*"))[0]
        data = good.read_bytes()
        (root / a / "broken.png").write_bytes(data[: len(data) // 3] if good.suffix == ".png" else b"\x89PNG\r\n\x1a\n" + data[:40])
        problems["unreadable"] = f"{a}/broken.png"
        (root / a / "notes.txt").write_text("scanned 2024, reviewer AB\n")
        problems["not-image"] = f"{a}/notes.txt"
        (root / "empty_class").mkdir(exist_ok=True)
        problems["empty-class"] = "empty_class/"
        shutil.copyfile(good, root / b / ("copied" + good.suffix))
        problems["duplicate"] = f"{b}/copied{good.suffix}"
        (root / b / "huge.png").write_bytes(bomb_png())
        problems["too-large"] = f"{b}/huge.png"
        (root / "README.txt").write_text("one folder per class\n")
        problems["stray-file"] = "README.txt"
        outside = root.parent / f"{root.name}-outside.png"
        draw(0, rng, 32, 32).save(outside)
        try:
            os.symlink(outside.resolve(), root / a / "link_out.png")
            problems["outside-link"] = f"{a}/link_out.png"
        except OSError:  # no symlinks on this file system
            pass
    return {"root": root, "classes": names, "problems": problems}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--first-class", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-problems", action="store_true")
    p.add_argument("--colour-only", action="store_true", help="no grayscale or 16-bit variants")
    a = p.parse_args()
    made = make_image_folder(a.out, a.classes, a.per_class, a.seed, first_class=a.first_class,
                             with_problems=a.with_problems, variants=COLOUR_VARIANTS if a.colour_only else VARIANTS)
    print(f"wrote {len(made['classes'])} classes to {made['root']}")
