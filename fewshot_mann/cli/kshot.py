"""``fewshot-mann kshot``: standard N-way K-shot accuracy (the protocol: engine/kshot.py)."""
from __future__ import annotations

import argparse
import sys
import time

from fewshot_mann import limits
from fewshot_mann.cli.common import (add_flag, add_shared_flags, at_least, classes_option, parse_checked, run_guarded,
                                     set_threads, apply_input_overrides)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-mann kshot", description="Standard N-way K-shot accuracy (see module doc).")
    p.add_argument("--checkpoint", required=True)
    add_shared_flags(p, "dataset", "data_root", "test_classes", "classes",
                     dataset_help="override the checkpoint's dataset (folder: cross-domain, every class held out "
                                  "by default)",
                     test_classes_help="folder datasets: classes to evaluate on: all, a fraction or a comma list")
    add_shared_flags(p, "polarity", "ink_frame", "resize")
    add_shared_flags(p, "ways", ways_nargs="+", ways_help="default: the checkpoint's ways")
    add_flag(p, "--shots", type=int, nargs="+", default=[1, 5], problem=at_least(1, "--shots", high=limits.MAX_SHOTS))
    add_flag(p, "--queries", type=int, default=1, problem=at_least(1, "--queries", high=limits.MAX_SHOTS),
             help="query images per class in each episode")
    add_shared_flags(p, "episodes", "seed", "device", "threads")
    add_flag(p, "--adapt", type=int, default=0, metavar="STEPS", problem=at_least(0, "--adapt", high=limits.MAX_ADAPT_STEPS),
             help="meta-fine-tune a copy of the model on each episode's support set for STEPS steps first")
    add_shared_flags(p, "finetune", "embed_precision")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the baselines on the same trials (nearest centroid and logistic regression)")
    add_flag(p, "--unknown-queries", type=int, default=0, metavar="Q",
             problem=at_least(0, "--unknown-queries", high=limits.MAX_SHOTS),
             help="add Q queries a trial from classes outside it and report the AUROC of known vs unknown "
                  "(JSON \"open_set\"); needs more classes than --ways")
    p.add_argument("--within-alphabet", action="store_true",
                   help="every trial's classes from one alphabet (Omniglot: the part of a class name before its "
                        "last /), the harder original one-shot protocol; default: classes from all")
    add_shared_flags(p, "no_feature_cache", "no_progress", "json", "allow_trained_classes")
    add_shared_flags(p, "plot", plot_help="write a PNG of accuracy by shots (the model, its baselines on the same "
                                          "trials, chance), reliability diagrams and confusion matrices")
    return p


def apply_overrides(cfg, args) -> None:
    if args.data_root:
        cfg.data.data_root = args.data_root
    if args.dataset and args.dataset != cfg.data.dataset:
        cfg.data.dataset, cfg.data.test_root, cfg.data.test_classes = args.dataset, None, "all"
    if args.test_classes is not None:
        cfg.data.test_root, cfg.data.test_classes = None, args.test_classes
    apply_input_overrides(cfg, args)
    cfg.episodes.instances = min(cfg.episodes.instances, min(args.shots) + args.queries)  # the loader's minimum


def _write_json(args, argv, rows, baselines, failed, kind, bank, cfg, ckpt) -> None:
    from fewshot_mann.fileio import atomic_write_json
    from fewshot_mann.reporting.records import environment

    atomic_write_json(args.json, {"results": rows, "baselines": baselines, "classes": kind,
                                  "class_names": list(bank.names), "checkpoint": args.checkpoint,
                                  "command": ["fewshot-mann", "kshot", *argv], "config": cfg.to_dict(),
                                  "training": {"episodes": ckpt.get("episodes_done")},
                                  **({"not_run": failed} if failed else {}), "date": time.strftime("%Y-%m-%d"),
                                  "environment": environment()})
    print(f"wrote {args.json}" + (f" ({len(rows)} of {len(rows) + len(failed)} rows)" if failed else ""))


def finetuner_for(cfg, args, recorded, kind: str):
    """``--finetune``: a ``Finetuner`` over the decoded images of the scored classes (the banks' order)."""
    from fewshot_mann.engine.loading import load_image_parts
    from fewshot_mann.fewshot.finetune import Finetuner, settings_for

    images = load_image_parts(cfg, progress=False, recorded=recorded, cache=not args.no_feature_cache).part(kind)
    return Finetuner(cfg.model, settings_for(args.finetune), images.images, seed=args.seed)


def main(argv=None) -> int:
    return run_guarded(_kshot, argv)


def _kshot(argv) -> int:
    from fewshot_mann.data.wording import KSHOT, naming_instances

    with naming_instances(KSHOT):  # kshot has no --instances: messages name --shots and --queries
        return _kshot_rows(argv)


def _kshot_rows(argv) -> int:
    from fewshot_mann.errors import DataError
    from fewshot_mann.data.heldout import bank_digests, check_scored, recorded_classes
    from fewshot_mann.engine.loading import load_split_banks
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, warn_nonfinite
    from fewshot_mann.engine.kshot import kshot_table
    from fewshot_mann.engine.trainer import resolve_device
    from fewshot_mann.reporting.calibration import checkpoint_calibration

    args = parse_checked(parser(), argv)
    kind = classes_option(args)
    set_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config_obj"]
    apply_overrides(cfg, args)
    device = resolve_device(args.device)
    model = load_model_from_checkpoint(ckpt, device)
    warn_nonfinite(ckpt, args.checkpoint)
    recorded = None if (args.dataset or args.test_classes is not None) else recorded_classes(ckpt)
    parts, pixel_parts = load_split_banks(cfg, progress=not args.no_progress, recorded=recorded,
                                          feature_cache=not args.no_feature_cache, with_pixels=True)
    bank, pixels = parts.part(kind), pixel_parts.part(kind)
    check_scored(ckpt, bank, kind, allow=args.allow_trained_classes, digests=bank_digests(parts, bank))
    finetuner = finetuner_for(cfg, args, recorded, kind) if args.finetune else None
    calibration = checkpoint_calibration(ckpt, args.finetune)
    print(f"calibration: {calibration.fitted_on}")
    rows, baselines, failed = [], [], []
    from fewshot_mann.engine.baselines import feature_banks
    features = None if args.no_baselines else feature_banks(bank, cfg.model, model)  # once, not per row
    for ways in args.ways or [cfg.episodes.ways]:  # row by row: a row that cannot run keeps the others
        for shots in args.shots:
            try:
                row, base = kshot_table(model, bank, pixels, cfg, [ways], [shots], args.episodes, args.seed,
                                        queries=args.queries, adapt=args.adapt, baselines=not args.no_baselines,
                                        device=device, progress=not args.no_progress, within_alphabet=args.within_alphabet,
                                        unknown_queries=args.unknown_queries, calibration=calibration,
                                        finetuner=finetuner, features=features)
            except DataError as exc:
                failed.append({"ways": ways, "shots": shots, "error": str(exc)})
                print(f"{ways}-way {shots}-shot: not run ({exc})", file=sys.stderr)
                continue
            rows += row
            baselines += base
    if args.json and rows:
        _write_json(args, argv, rows, baselines, failed, kind, bank, cfg, ckpt)
    if args.plot and rows:
        from fewshot_mann.reporting.trust_plots import plot_kshot
        plot_kshot(rows, baselines, args.plot, f"{cfg.model.model} on {cfg.data.dataset}")
        print(f"wrote {args.plot}")
    if failed:
        raise DataError(f"{len(failed)} of the {len(rows) + len(failed)} rows could not run (first: "
                        f"{failed[0]['ways']}-way {failed[0]['shots']}-shot: {failed[0]['error']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
