"""Omniglot characters of one part of a split written as a user's handwriting folder in another pen:
each image restyled once (``data/pen.py``'s HANDWRITING ranges, every image, a fixed seed: thicker,
blurred, grey, slanted, squeezed strokes), dark ink on white, 28 x 28 PNG, one folder per character.

The validation domain for handwriting that does not look like Omniglot (issue 30, item 5): a model
is chosen on ``--part validation`` of it, never on the handwriting folder it is scored on.

    python reports/scripts/omniglot_pen_folder.py OMNIGLOT_DIR OUT_DIR [--part validation] [--seed 12345]
"""
import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot_mann.data.omniglot import load_omniglot, split_parts
from fewshot_mann.data.pen import HANDWRITING

a = argparse.ArgumentParser()
a.add_argument("root")
a.add_argument("out")
a.add_argument("--part", default="validation", choices=("train", "validation", "test"))
a.add_argument("--split", default="santoro")
a.add_argument("--seed", type=int, default=12345)
args = a.parse_args()
bank = split_parts(load_omniglot(args.root, 28, progress=False), args.split)[args.part]
pen = dataclasses.replace(HANDWRITING, probability=1.0)
images = pen(torch.from_numpy(bank.images).float() / 255, torch.Generator().manual_seed(args.seed))
ink = (255 - (images.clamp(0, 1) * 255).round()).to(torch.uint8).numpy()[:, 0]  # dark on light
out = Path(args.out)
for c, name in enumerate(bank.names):
    folder = out / name.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(bank.counts[c]):
        Image.fromarray(np.ascontiguousarray(ink[bank.offsets[c] + i])).save(folder / f"{i:02d}.png")
print(f"wrote {len(ink)} images of {bank.num_classes} {args.part} characters to {out}")
