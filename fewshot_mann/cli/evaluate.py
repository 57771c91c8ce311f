"""``fewshot-mann evaluate`` (``evaluate.py``): accuracy by instance on held-out classes.

``--classes`` chooses which of the checkpoint's classes to score (``--split test|train``
is its deprecated spelling here; the class split itself is the checkpoint's).
"""
from __future__ import annotations

import argparse
import sys
import time

from fewshot_mann.cli.common import (add_shared_flags, apply_input_overrides, classes_option, parse_checked,
                                     run_guarded, set_threads)
from fewshot_mann.config import DECODES, answers_any_ways, is_backbone


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description="Accuracy by instance on held-out classes.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by train.py")
    add_shared_flags(p, "data_root", "dataset", "classes", "allow_trained_classes", "instances", "ways",
                     "test_classes", "episodes", "seed",
                     data_root_help="override the data root stored in the checkpoint",
                     allow_trained_classes_help="score test classes even where the checkpoint records training on "
                                                "some of them (or their images)",
                     dataset_help="override the dataset (e.g. folder for cross-domain)",
                     instances_help="images of each class per episode, instead of the checkpoint's "
                                    "(e.g. a folder with few per class)",
                     ways_help="classes per episode, instead of the checkpoint's (string-label checkpoints only: "
                               "one-hot ones have one input and one output per trained way)",
                     test_classes_help="folder datasets: the classes to evaluate on instead of the checkpoint's "
                                       "split: all (e.g. a --data-root of new classes), a fraction or a comma list")
    p.add_argument("--decode", choices=DECODES, default="free",
                   help="free: the paper's protocol (the argmax of each output group; any label may be answered); "
                        "seen: the answer restricted to the labels given so far in the episode, as predict does "
                        "(a class's 1st presentation is then wrong, except at the episode's first step, "
                        "where no label has been given and the free answer is kept)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the baselines on the same episodes (nearest centroid and logistic regression, fitted at "
                        "each step on the steps before it; the logistic fits take ~35 s per 1,000 5-way episodes on 2 cores)")
    add_shared_flags(p, "resize", "batch_size", "device", "threads", "json", "plot", "no_progress", "no_feature_cache",
                     "finetune", "embed_precision")
    return p


def apply_overrides(cfg, args) -> None:
    """The checkpoint's config with this command's data and episode overrides."""
    from fewshot_mann.data.episodes import with_ways

    if args.data_root:
        cfg.data.data_root = args.data_root
    if args.dataset and args.dataset != cfg.data.dataset:
        cfg.data.dataset = args.dataset
        cfg.data.test_root = None
        cfg.data.test_classes = "all"  # cross-domain: every class of the folder is held out
    if args.test_classes is not None:
        cfg.data.test_root, cfg.data.test_classes = None, args.test_classes
    apply_input_overrides(cfg, args)
    if args.ways is not None:
        cfg.episodes = with_ways(cfg.episodes, args.ways, answers_any_ways(cfg))
    if args.instances is not None:
        cfg.episodes.instances = args.instances  # the models read episodes of any length
    if args.ways is not None or args.instances is not None:
        cfg.validate()


def main(argv=None) -> int:
    return run_guarded(_evaluate, argv)



def _evaluate(argv) -> int:
    from fewshot_mann.data.episodes import check_bank
    from fewshot_mann.data.heldout import bank_digests, check_scored, recorded_classes
    from fewshot_mann.engine.loading import load_split_banks
    from fewshot_mann.engine import distributed
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, warn_nonfinite
    from fewshot_mann.engine.trainer import resolve_device

    args = parse_checked(evaluate_parser(), argv)
    kind = classes_option(args)
    set_threads(args.threads)
    # under torchrun the episodes are shared out over the processes; rank 0 reports
    ctx, device = distributed.init_from_env(resolve_device(args.device))
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config_obj"]
    # the classes the checkpoint recorded (wherever its folder is now), unless the dataset or class split is overridden
    recorded = None if (args.dataset or args.test_classes is not None) else recorded_classes(ckpt)
    apply_overrides(cfg, args)
    model = load_model_from_checkpoint(ckpt, device)
    nonfinite = warn_nonfinite(ckpt, args.checkpoint) if ctx.is_main else False
    parts, pixel_parts = load_split_banks(cfg, progress=not args.no_progress, recorded=recorded, with_pixels=True,
                                          feature_cache=not args.no_feature_cache)
    bank = parts.part(kind)
    check_bank(bank, cfg.episodes, f"{kind} classes")
    check_scored(ckpt, bank, kind, allow=args.allow_trained_classes, digests=bank_digests(parts, bank))
    t0 = time.perf_counter()
    tuned_scores = None
    if args.finetune:
        res, tuned_scores = _finetuned(model, bank, cfg, args, recorded, kind, ctx, device)
    else:
        res = distributed.evaluate_sharded(model, bank, cfg.episodes, ctx, episodes=args.episodes, seed=args.seed,
                                           batch_size=args.batch_size, device=device, progress=not args.no_progress,
                                           decode=args.decode)
    seconds = time.perf_counter() - t0
    distributed.close(ctx)
    if not ctx.is_main:
        return 0
    res.pop("_per_episode")
    report(args, argv, ckpt, cfg, res, bank, pixel_parts.part(kind), kind,
           seconds=seconds, device=device, nonfinite=nonfinite, model=model, tuned_scores=tuned_scores)
    return 0


def _finetuned(model, bank, cfg, args, recorded, kind, ctx, device):
    """``--finetune``: every episode answered with the backbone re-tuned on the steps told so far
    (``engine.finetune_evaluation``), in one process."""
    from fewshot_mann.cli.kshot import finetuner_for
    from fewshot_mann.engine.finetune_evaluation import finetuned_evaluate
    from fewshot_mann.errors import UserError

    if ctx.enabled:
        raise UserError("--finetune runs in one process: start evaluate without torchrun")
    finetuner = finetuner_for(cfg, args, recorded, kind)
    print(f"fine-tuning the backbone {args.finetune} steps every {cfg.episodes.ways} steps of each episode, "
          f"on the steps told so far ({cfg.episodes.instances - 1} tunings an episode)")
    return finetuned_evaluate(model, bank, finetuner, cfg.episodes, args.episodes, args.seed, device,
                              decode=args.decode, progress=not args.no_progress)


def report(args, argv, ckpt, cfg, res, bank, pixels, kind, seconds, device, nonfinite, model=None,
           tuned_scores=None) -> None:
    """Print the table and the baselines on the same episodes (``engine.baselines``); write --json/--plot."""
    from fewshot_mann.engine.evaluation import format_table
    from fewshot_mann.reporting.records import training_record, write_evaluation

    tuned = f", backbone fine-tuned {args.finetune} steps" if getattr(args, "finetune", 0) else ""
    print(format_table(res, f"{cfg.model.model} on {bank.num_classes} {kind} classes{tuned}"))
    if cfg.data.dataset == "folder":
        from fewshot_mann.engine.predict import warn_if_hard

        warn_if_hard(bank, pixels, is_backbone(cfg.model.encoder), what=f"the {kind} classes'")
    from fewshot_mann.engine.baselines import feature_banks, run_by_instance

    # is the memory helping? the same episodes, the plain classifiers fitted on the steps told so far
    baselines = {} if args.no_baselines else run_by_instance(
        {"pixels": pixels, **feature_banks(bank, cfg.model, model)}, cfg.episodes, episodes=args.episodes,
        seed=args.seed, batch_size=args.batch_size, device=device, progress=not args.no_progress)
    if cfg.data.dataset == "folder" and model is not None:
        res = {**res, **evaluation_trust(model, bank, cfg, args, ckpt, device, tuned_scores)}
    out = {**res, "classes": kind, "class_names": list(bank.names), "num_classes": bank.num_classes,
           **baselines,
           "checkpoint": str(args.checkpoint),
           "checkpoint_episodes": ckpt.get("episodes_done"),
           "training": training_record(ckpt), "config": cfg.to_dict(),
           "command": ["evaluate.py", *argv], "seconds": round(seconds, 3),
           "date": time.strftime("%Y-%m-%d"), "device": str(device),
           **({"warning": "non-finite weights: the numbers are not a measurement"} if nonfinite else {})}
    write_evaluation(out, args.json, args.plot, cfg.model.model)


def evaluation_trust(model, bank, cfg, args, ckpt, device, scores=None) -> dict:
    """Per-class accuracy, the confusion matrix and calibration of the answers from the 2nd presentation of a
    class on (``trust.evaluation_scores``), with the checkpoint's temperature; a line for each."""
    from fewshot_mann.engine.trust import evaluation_scores, trust_blocks
    from fewshot_mann.reporting.calibration import checkpoint_calibration

    if scores is None:  # with --finetune: the tuned answers' scores, computed with them
        scores = evaluation_scores(model, bank, cfg.episodes, args.episodes, args.seed, args.batch_size, device)
    blocks = trust_blocks(scores, None, list(bank.names), checkpoint_calibration(ckpt, args.finetune),
                          cfg.episodes.instances - 1, cfg.episodes.ways)
    c = blocks["calibration"]
    print(f"answers from the 2nd presentation on, over the episode's labels: calibration error (ECE, 15 bins) "
          f"{c['before']['ece']:.3f} at temperature 1, {c['ece']:.3f} at {c['temperature']:.3g} ({c['fitted_on']})")
    blocks["calibration"]["answers"] = "steps from the 2nd presentation of their class on, over the episode's labels"
    return blocks


if __name__ == "__main__":
    sys.exit(main())
