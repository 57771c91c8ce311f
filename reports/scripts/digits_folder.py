"""sklearn's handwritten digits (1,797 images, 8 x 8, 16 grey levels) as a folder of dark-on-light
32 x 32 PNG files, one sub-folder per digit: handwriting the project never trained on.

    python reports/scripts/digits_folder.py OUT_DIR

The rendering (the PNGs' pixels) is pinned by ``tests/data/test_digits_reading.py``, and so is what
the folder reader makes of them at the Omniglot model's 20 px with ``--ink-frame auto``.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def digit_images():
    """(label, (32, 32, 3) uint8 image) for each of the 1,797 digits, in sklearn's order."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    for image, label in zip(digits.images, digits.target):
        ink = (255 - image * 255 / 16).clip(0, 255).astype(np.uint8)  # dark ink on light paper
        yield int(label), np.asarray(Image.fromarray(ink).resize((32, 32), Image.BILINEAR).convert("RGB"))


def write_digits(out: Path) -> int:
    """Write OUT/digit-D/NNNN.png; returns the number of images."""
    n = 0
    for i, (label, pixels) in enumerate(digit_images()):
        folder = out / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        n += 1
    return n


if __name__ == "__main__":
    out = Path(sys.argv[1])
    print(f"wrote {write_digits(out)} images to {out}")
