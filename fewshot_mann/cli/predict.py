"""``fewshot-mann predict``: classify new images from a few labelled examples per class
(the protocol: engine/predict.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fewshot_mann import limits
from fewshot_mann.cli.common import (add_flag, add_shared_flags, at_least, output_file, parse_checked, run_guarded,
                                     set_threads, apply_input_overrides)
from fewshot_mann.errors import DataError


def _probability(value) -> str | None:
    if not 0.0 <= value <= 1.0:
        return f"--threshold must be between 0 and 1 (got {value})"
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-mann predict",
                                description="classify new images from a few labelled examples per class.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by train.py")
    p.add_argument("--support", required=True, metavar="DIR", help="one sub-folder per class with a few labelled images")
    p.add_argument("--query", required=True, nargs="+", metavar="PATH", help="image files and/or folders to classify")
    add_flag(p, "--orders", type=int, default=8, problem=at_least(1, "--orders", high=limits.MAX_ORDERS),
             help="shuffled support orders / label assignments to average over")
    add_flag(p, "--threshold", type=float, default=None, problem=_probability,
             help="flag predictions whose probability is below this (default: (1 + 1/classes) / 2)")
    add_flag(p, "--adapt", type=int, default=0, metavar="STEPS", problem=at_least(0, "--adapt", high=limits.MAX_ADAPT_STEPS),
             help="first meta-fine-tune a copy of the model this many steps on episodes of the support set "
                  "(0 = answer with the model as trained)")
    add_shared_flags(p, "finetune", "embed_precision", "resize")
    add_shared_flags(p, "seed", seed_help="seed of the support orders and label assignments")
    add_shared_flags(p, "no_feature_cache")  # accepted as by every command that embeds images; predict never caches
    add_flag(p, "--summary-json", default=None, metavar="PATH", problem=output_file("--summary-json"),
             help="write the summary (counts by answer, low confidence, unknown; per-class accuracy and the confusion "
                  "matrix when the --query folder's sub-folders are named like support classes) and the calibration "
                  "used as a JSON object")
    add_shared_flags(p, "json", "csv", "batch_size", "device", "threads", json_help="write the results as a JSON list",
                     batch_size=256, batch_size_help="sequences per forward pass")
    return p


def main(argv=None) -> int:
    return run_guarded(_predict, argv)


def _predict(argv) -> int:
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, refuse_nonfinite
    from fewshot_mann.engine.predict import format_results, one_shot_finetune_note, predict, support_cap, to_csv
    from fewshot_mann.reporting.calibration import checkpoint_calibration
    from fewshot_mann.engine.trainer import resolve_device
    from fewshot_mann.fileio import atomic_write_json, atomic_write_text

    args = parse_checked(parser(), argv)
    set_threads(args.threads)
    for q in args.query:  # a typo fails before any loading
        if not Path(q).expanduser().exists():
            raise DataError(f"--query {q} does not exist")
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config_obj"]
    apply_input_overrides(cfg, args)
    model = load_model_from_checkpoint(ckpt, device)
    refuse_nonfinite(ckpt, args.checkpoint)  # a NaN model would answer every query with one class
    calibration = checkpoint_calibration(ckpt, args.finetune)  # the fine-tuned answers' record where fitted
    results, bank = predict(model, cfg, args.support, args.query, orders=args.orders, threshold=args.threshold,
                            seed=args.seed, batch_size=args.batch_size, device=device, adapt=args.adapt,
                            finetune=args.finetune, calibration=calibration)
    cut = (1 + 1 / bank.num_classes) / 2 if args.threshold is None else args.threshold
    print(f"{cfg.model.model} checkpoint, {bank.num_classes} support classes "
          f"({', '.join(f'{n} {c}' for n, c in zip(bank.names, bank.counts))} images), "
          f"{len(results)} queries, {args.orders} orders, low confidence below {cut:.2f}"
          + (f", adapted {args.adapt} steps to the support set" if args.adapt else "")
          + (f", backbone fine-tuned {args.finetune} steps to the support images" if args.finetune else ""))
    note = one_shot_finetune_note(bank.counts, args.finetune)
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(format_results(results))
    report = trust_summary(results, bank, args, calibration, support_cap(cfg))
    if args.json:
        atomic_write_json(args.json, results)
        print(f"wrote {args.json}")
    if args.csv:
        atomic_write_text(args.csv, to_csv(results, bank.names))
        print(f"wrote {args.csv}")
    if args.summary_json:
        atomic_write_json(args.summary_json, report)
        print(f"wrote {args.summary_json}")
    return 0


def trust_summary(results: list[dict], bank, args, calibration, cap: int) -> dict:
    """Print the summary line, what the calibration means and (truth known) per-class accuracy; return them."""
    from fewshot_mann.engine import predict_trust as pt

    names = list(bank.names)
    shots = pt.support_shots(bank, cap)
    fit = calibration.for_shots(shots)
    out = {"summary": pt.summary(results, names), "calibration": {**calibration.to_dict(), "used": vars(fit) if
                                                                   calibration.fitted else None}}
    print(pt.summary_line(out["summary"]))
    for line in pt.calibration_notes(calibration, fit, args.finetune):
        print(line)
    if calibration.fitted and args.finetune:  # the temperature's, and the unknown threshold's
        out["calibration"]["finetuned_answers_checked"] = pt.finetuned_checked(calibration, args.finetune)
        out["calibration"]["finetuned_unknown_threshold_checked"] = pt.threshold_checked(calibration, args.finetune)
    truth = pt.query_truth(args.query, results, names)
    if truth is not None:
        out["per_class"], out["confusion"] = pt.per_class(results, truth, names)
        print(pt.format_per_class(out["per_class"]))
    return out


if __name__ == "__main__":
    sys.exit(main())
