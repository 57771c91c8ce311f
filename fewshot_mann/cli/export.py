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
    return p


def main(argv=None) -> int:
    return run_guarded(_export, argv)


def _export(argv) -> int:
    from fewshot_mann.engine.export import export_checkpoint

    args = parse_checked(parser(), argv)
    export_checkpoint(args.checkpoint, args.out)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, weights only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
