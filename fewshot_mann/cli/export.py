"""``fewshot-mann export RUN/checkpoint.pt OUT.pt``: a small, weights-only copy of a checkpoint
(engine/export.py)."""
from __future__ import annotations

import argparse
import os
import sys

from fewshot_mann.cli.common import parse_checked, run_guarded


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-mann export", description="a small, weights-only copy of a checkpoint.")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--without-image-record", action="store_true",
                   help="leave out the record of the training images (digest prefixes): with it, anyone holding an "
                        "image can test whether the model trained on it; without it, evaluate cannot refuse trained "
                        "images as held out")
    return p


def main(argv=None) -> int:
    return run_guarded(_export, argv)


def _export(argv) -> int:
    from fewshot_mann.engine.export import export_checkpoint

    args = parse_checked(parser(), argv)
    small = export_checkpoint(args.checkpoint, args.out, image_record=not args.without_image_record)
    size = os.path.getsize(args.out)
    kept = "train_images" in small or "train_digests" in small
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, weights without optimiser state"
          + ("; it keeps a record of the training images, so membership of an image can be tested: "
             "--without-image-record leaves it out)" if kept else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
