"""``fewshot-mann inspect FOLDER``: check an image folder dataset before training on it
(engine/inspection.py). Named so as not to shadow the standard library's ``inspect``."""
from __future__ import annotations

import argparse
import json
import sys

from fewshot_mann import limits
from fewshot_mann.cli.common import add_flag, add_shared_flags, at_least, parse_checked, run_guarded
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
    p.add_argument("--checkpoint", default=None, help="read the images as this model does (its resolution, channels, "
                                                      "resize); implies --for kshot unless --for says otherwise")
    p.add_argument("--for", dest="use", choices=("train", "kshot", "predict"), default=None,
                   help="what the folder is for: train (episodes and the class split; the default without "
                        "--checkpoint), kshot (--ways classes with --shots + --queries images) or predict (a support "
                        "folder: 2 classes or more)")
    add_flag(p, "--shots", type=int, default=5, problem=at_least(1, "--shots", high=limits.MAX_SHOTS),
             help="--for kshot: labelled images a class")
    add_flag(p, "--queries", type=int, default=1, problem=at_least(1, "--queries", high=limits.MAX_SHOTS),
             help="--for kshot: query images a class")
    add_shared_flags(p, "json", "no_progress", json_help="also write the report as JSON ('-' = stdout only)")
    return p


def main(argv=None) -> int:
    return run_guarded(_inspect, argv)


def _inspect(argv) -> int:
    from fewshot_mann.engine.inspection import format_report, inspect_folder
    from fewshot_mann.fileio import atomic_write_json

    args = parse_checked(parser(), argv)
    use = args.use or ("kshot" if args.checkpoint else "train")
    reader = None
    if args.checkpoint:
        from fewshot_mann.engine.checkpoint import load_checkpoint
        from fewshot_mann.models.inputs import image_reader
        reader = image_reader(load_checkpoint(args.checkpoint)["config_obj"])
    instances = args.shots + args.queries if use == "kshot" else args.instances
    report = inspect_folder(args.folder, ways=args.ways, instances=instances, image_size=args.image_size,
                            channels=args.channels, resize=args.resize, test_classes=args.test_classes, seed=args.seed,
                            progress=not args.no_progress, use=use, reader=reader)
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
