"""``fewshot-mann bench``: speed benchmark of the training step against the plain reference
loop (the measurements: engine/bench.py)."""
from __future__ import annotations

import argparse
import sys

from fewshot_mann import limits
from fewshot_mann.cli.common import add_flag, add_shared_flags, at_least, parse_checked, run_guarded, set_threads
from fewshot_mann.config import MODELS
from fewshot_mann.errors import UserError


def _positive(flag: str):
    return lambda value: None if 0 < value <= limits.MAX_SECONDS else \
        f"{flag} must be > 0 and at most {limits.MAX_SECONDS:.0f} (got {value})"


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-mann bench",
                                description="Speed benchmark: the plain reference MANN loop against the project's "
                                            "training step.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_shared_flags(p, "threads", "batch_size", batch_size=16, batch_size_help="training batch (episodes per step)")
    p.add_argument("--eval-batch-sizes", default="250,1000", help="comma list of evaluation batch sizes")
    add_flag(p, "--seconds", type=float, default=10.0, problem=_positive("--seconds"),
             help="seconds per measurement (split into --rounds)")
    add_flag(p, "--rounds", type=int, default=3, problem=at_least(1, "--rounds", high=limits.MAX_ROUNDS),
             help="interleaved rounds per training measurement")
    p.add_argument("--models", default="mann",
                   help=f"comma list of models to time ({', '.join(MODELS)}; "
                        "mann: memory backend auto (the C++ kernel on CPU where it loads); "
                        "mann-cpp: memory backend kernel (lrua/kernel.py), an error where it cannot load; "
                        "mann-fast: memory backend sequence (lrua/sequence.py); "
                        "mann-autograd: memory backend autograd (the equations step by step))")
    p.add_argument("--no-reference", action="store_true", help="skip the plain reference loop")
    p.add_argument("--key-strength", action="store_true", help="MANN with the key-strength extension")
    add_shared_flags(p, "data_root", data_root_help="real Omniglot instead of synthetic images")
    add_flag(p, "--synthetic-classes", type=int, default=1200, problem=at_least(5, "--synthetic-classes", high=limits.MAX_CLASSES),
             help="synthetic classes (before x4 rotations)")
    p.add_argument("--jitter-shift", type=float, default=0.0, help="training augmentation, as train.py")
    p.add_argument("--jitter-rotate", type=float, default=0.0, help="training augmentation, as train.py")
    add_flag(p, "--profile", type=int, default=0, metavar="STEPS", problem=at_least(0, "--profile", high=limits.MAX_ROUNDS),
             help="also profile this many training steps of every loop with torch.profiler (top ops)")
    add_flag(p, "--rss-steps", type=int, default=0, problem=at_least(0, "--rss-steps", high=limits.MAX_ROUNDS),
             help="also run this many project MANN training steps, sampling the resident memory")
    p.add_argument("--backbones", default="", metavar="LIST",
                   help="also time feature extraction of these backbones (comma list, e.g. "
                        "fewshot:conv4,timm:tf_efficientnet_lite0), images/s")
    p.add_argument("--backbone-weights", default="none",
                   help="weights of --backbones (none = random: the same speed, nothing to download)")
    p.add_argument("--time-to-accuracy", metavar="PRESET", default=None,
                   help="instead: train PRESET (a train -c JSON, e.g. configs/table1.json) from scratch and report "
                        "the training time at which each of the paper's Table 1 MANN targets is first met on the "
                        "validation classes")
    p.add_argument("--out", default=None, help="--time-to-accuracy: the run directory (default: a temporary one)")
    add_shared_flags(p, "plot", plot_help="--time-to-accuracy: a plot of accuracy vs training seconds")
    add_shared_flags(p, "seed", "json")
    return p


def comma_list(text: str, flag: str, cast=str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be a comma list (got {text!r})") from None
    if not items:
        raise UserError(f"{flag} is empty")
    return items


def main(argv=None) -> int:
    return run_guarded(_bench, argv)


def time_to_accuracy(args, argv) -> int:
    """Train the preset from scratch; print when each Table 1 target is first met on validation classes."""
    import tempfile
    from pathlib import Path

    from fewshot_mann.cli.train import config_from_args, parse_train_args
    from fewshot_mann.engine.trainer import train
    from fewshot_mann.fileio import atomic_write_json
    from fewshot_mann.reporting.time_to_accuracy import (TARGETS, first_met, format_first_met, plot_curves,
                                                         validation_checks)

    train_argv = ["-c", args.time_to_accuracy] + (["--threads", str(args.threads)] if args.threads else [])
    cfg = config_from_args(parse_train_args(train_argv))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        summary = train(cfg, out, overwrite=bool(args.out), progress=True)
        checks = validation_checks(out / "metrics.jsonl")
    met = first_met(checks)
    print(format_first_met(met))
    if args.plot:
        plot_curves(checks, args.plot, f"{args.time_to_accuracy}")
        print(f"wrote {args.plot}")
    if args.json:
        atomic_write_json(args.json, {"preset": args.time_to_accuracy, "config": cfg.to_dict(), "targets": TARGETS,
                                      "first_met": {str(k): v for k, v in met.items()}, "checks": checks,
                                      "train_seconds": summary["train_seconds"],
                                      "episodes": summary["episodes_done"], "command": ["fewshot-mann", "bench", *argv]})
        print(f"wrote {args.json}")
    return 0


def _bench(argv) -> int:
    from fewshot_mann.engine.bench import VARIANTS, run_bench

    args = parse_checked(bench_parser(), argv)
    if args.time_to_accuracy:
        set_threads(args.threads)
        return time_to_accuracy(args, argv)
    args.models = comma_list(args.models, "--models")
    unknown = [m for m in args.models if m not in MODELS and m not in VARIANTS]
    if unknown:
        raise UserError(f"--models: unknown model(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(MODELS + tuple(VARIANTS))}")
    args.eval_batch_sizes = comma_list(args.eval_batch_sizes, "--eval-batch-sizes", int)
    if min(args.eval_batch_sizes) < 1 or max(args.eval_batch_sizes) > limits.MAX_BATCH:
        raise UserError(f"--eval-batch-sizes must be in [1, {limits.MAX_BATCH}] each (got {args.eval_batch_sizes})")
    args.backbones = comma_list(args.backbones, "--backbones") if args.backbones.strip() else []
    set_threads(args.threads)
    run_bench(args, ["fewshot-mann", "bench", *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main())
