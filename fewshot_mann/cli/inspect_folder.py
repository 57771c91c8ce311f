"""``fewshot-mann inspect FOLDER``: check an image folder dataset before training on it
(engine/inspection.py). Named so as not to shadow the standard library's ``inspect``."""
from __future__ import annotations

import argparse
import json
import sys

from fewshot_mann.cli.common import add_shared_flags, parse_checked, run_guarded
from fewshot_mann.config import RESIZE_POLICIES, Config


def parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="fewshot-mann inspect", description="Check an image folder dataset.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", help="a folder with one sub-folder of images per class")
    add_shared_flags(p, "ways", "instances", "test_classes", "seed", "image_size", "channels",
                     ways=d.episodes.ways, ways_help="classes per episode",
                     instances=d.episodes.instances, instances_help="images of each class per episode",
                     test_classes_help="the class split to check: fraction or comma list (as train.py)",
                     seed=d.train.seed, seed_help="the seed of the class split (train.py --seed)",
                     image_size=d.data.image_size, channels=d.data.channels)
    p.add_argument("--resize", choices=RESIZE_POLICIES, default=d.data.resize)
    add_shared_flags(p, "json", "no_progress", json_help="also write the report as JSON ('-' = stdout only)")
    return p


def main(argv=None) -> int:
    return run_guarded(_inspect, argv)


def _inspect(argv) -> int:
    from fewshot_mann.engine.inspection import format_report, inspect_folder
    from fewshot_mann.fileio import atomic_write_json

    args = parse_checked(parser(), argv)
    report = inspect_folder(args.folder, ways=args.ways, instances=args.instances, image_size=args.image_size,
                            channels=args.channels, resize=args.resize, test_classes=args.test_classes, seed=args.seed,
                            progress=not args.no_progress)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.json:
            atomic_write_json(args.json, report)
            print(f"wrote {args.json}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
