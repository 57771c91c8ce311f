"""sklearn's handwritten digits (1,797 images, 8 x 8, 16 grey levels) as a folder of dark-on-light
32 x 32 PNG files, one sub-folder per digit: handwriting the project never trained on.

    python reports/scripts/digits_folder.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

out = Path(sys.argv[1])
digits = load_digits()
for i, (image, label) in enumerate(zip(digits.images, digits.target)):
    folder = out / f"digit-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    ink = (255 - image * 255 / 16).clip(0, 255).astype(np.uint8)  # dark ink on light paper
    Image.fromarray(ink).resize((32, 32), Image.BILINEAR).convert("RGB").save(folder / f"{i:04d}.png")
print(f"wrote {len(digits.images)} images to {out}")
