"""``fewshot-mann knn``: the nearest-neighbour baseline on the evaluation episodes of
evaluate.py (engine/knn.py). ``--class-split`` chooses which classes are held out (raw
pixels; a checkpoint's own otherwise), ``--classes`` which of them to score."""
from __future__ import annotations

import argparse
import sys
import time

from fewshot_mann.cli.common import add_flag, add_shared_flags, classes_option, parse_checked, run_guarded, set_threads
from fewshot_mann.config import LABEL_ENCODINGS, RESIZE_POLICIES, Config, seed_problem
from fewshot_mann.engine.knn import LAYERS


def knn_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="fewshot-mann knn",
                                description="Nearest-neighbour baseline on the evaluation episodes of evaluate.py.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", default="raw", metavar="raw|CHECKPOINT",
                   help="raw pixels, or a checkpoint.pt whose trained features to use (its data config is used)")
    p.add_argument("--layer", choices=LAYERS, default="encoder",
                   help="with a checkpoint: the conv encoder output, or the input of the output layer")
    add_shared_flags(p, "dataset", "data_root", dataset_help=f"default: {d.data.dataset} or the checkpoint's",
                     data_root_help="Omniglot root or image folder (default as train.py)")
    p.add_argument("--class-split", default=None, help=f"Omniglot class split (default: {d.data.split})")
    add_shared_flags(p, "image_size", "channels", image_size_help=f"default: {d.data.image_size} or the checkpoint's",
                     channels_help="folder datasets: 1 or 3")
    p.add_argument("--test-root", default=None, help="folder datasets: a separate folder of held-out classes")
    add_shared_flags(p, "test_classes", test_classes_help="folder datasets: held-out fraction or comma list")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default=None, help="folder datasets: pad, crop or stretch")
    add_shared_flags(p, "ways", "instances", ways_help=f"default: {d.episodes.ways} or the checkpoint's",
                     instances_help=f"default: {d.episodes.instances} or the checkpoint's")
    p.add_argument("--labels", choices=LABEL_ENCODINGS, default=None, help="default: onehot or the checkpoint's")
    add_shared_flags(p, "classes")
    add_flag(p, "--split-seed", type=int, default=None, problem=lambda seed: seed_problem(seed, "--split-seed"),
             help="--features raw on a folder: the seed that chose the held-out classes (use the --seed the "
                  "model you compare with was trained with; default: the checkpoint's, else --seed)")
    add_shared_flags(p, "allow_trained_classes", "episodes", "batch_size", "seed", "device", "threads", "json", "plot",
                     "no_progress", "no_feature_cache", seed_help="episode seed (evaluate.py's --seed)",
                     json_help="write the results as JSON (evaluate.py's keys)")
    return p


def apply_overrides(cfg: Config, args) -> Config:
    overrides = {("data", "dataset"): args.dataset, ("data", "data_root"): args.data_root,
                 ("data", "split"): args.class_split, ("data", "image_size"): args.image_size,
                 ("data", "channels"): args.channels, ("data", "test_root"): args.test_root,
                 ("data", "test_classes"): args.test_classes, ("data", "resize"): args.resize,
                 ("episodes", "ways"): args.ways, ("episodes", "instances"): args.instances,
                 ("episodes", "labels"): args.labels}
    for (section, name), value in overrides.items():
        if value is not None:
            setattr(getattr(cfg, section), name, value)
    cfg.validate()
    return cfg


def main(argv=None) -> int:
    return run_guarded(_knn, argv)


def _features(args, device):
    """(config, embed, what, checkpoint or None) of ``--features``: raw pixels or a checkpoint's layer."""
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, warn_nonfinite
    from fewshot_mann.engine.knn import CheckpointFeatures, raw_pixels
    from fewshot_mann.errors import UserError

    if args.features == "raw":
        cfg = apply_overrides(Config(), args)
        cfg.train.seed = args.seed if args.split_seed is None else args.split_seed  # the folder's class split
        return cfg, raw_pixels, "raw pixels", None
    ckpt = load_checkpoint(args.features)
    cfg = ckpt["config_obj"]
    trained_episodes = (cfg.episodes.ways, cfg.episodes.labels)
    if args.dataset and args.dataset != cfg.data.dataset:
        cfg.data.test_root, cfg.data.test_classes = None, "all"  # cross-domain, as evaluate.py
    cfg = apply_overrides(cfg, args)
    if args.layer == "controller" and (cfg.episodes.ways, cfg.episodes.labels) != trained_episodes:
        raise UserError(f"--layer controller runs the trained model, which reads {trained_episodes[0]}-way "
                        f"{trained_episodes[1]} labels; drop --ways/--labels or use --layer encoder")
    embed = CheckpointFeatures(load_model_from_checkpoint(ckpt, device), args.layer)
    warn_nonfinite(ckpt, args.features)
    if args.split_seed is not None:
        cfg.train.seed = args.split_seed
    return cfg, embed, f"{args.layer} features of {args.features}", ckpt


def _knn(argv) -> int:
    from fewshot_mann.engine import loading
    from fewshot_mann.data.episodes import check_bank
    from fewshot_mann.data.heldout import bank_digests, check_scored, recorded_classes
    from fewshot_mann.engine.evaluation import evaluate, format_table
    from fewshot_mann.engine.knn import KNNClassifier
    from fewshot_mann.engine.trainer import resolve_device
    from fewshot_mann.reporting.records import training_record, write_evaluation

    args = parse_checked(knn_parser(), argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    kind = classes_option(args)
    cfg, embed, what, ckpt = _features(args, device)
    recorded = recorded_classes(ckpt) if ckpt is not None and not (args.dataset or args.test_classes) else None
    parts, pixel_parts = loading.load_split_banks(cfg, progress=not args.no_progress, recorded=recorded,
                                                  with_pixels=True, feature_cache=not args.no_feature_cache)
    bank = parts.part(kind)
    check_bank(bank, cfg.episodes, f"{kind} classes")
    if ckpt is not None:
        check_scored(ckpt, bank, kind, allow=args.allow_trained_classes, digests=bank_digests(parts, bank))
    t0 = time.perf_counter()
    res = evaluate(KNNClassifier(embed), bank, cfg.episodes, episodes=args.episodes, seed=args.seed,
                   batch_size=args.batch_size, device=device, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    res.pop("_per_episode")
    print(format_table(res, f"kNN ({what}) on {bank.num_classes} {kind} classes"))
    from fewshot_mann.config import is_backbone
    from fewshot_mann.engine.baselines import run_by_instance
    features = {"features": bank} if is_backbone(cfg.model.encoder) else {}
    baselines = run_by_instance({"pixels": pixel_parts.part(kind), **features}, cfg.episodes, episodes=args.episodes,
                                seed=args.seed, batch_size=args.batch_size, device=device,
                                progress=not args.no_progress)
    out = {**res, "classes": kind, "class_names": list(bank.names), "num_classes": bank.num_classes, "method": "knn",
           **baselines,
           "features": "raw" if ckpt is None else str(args.features),
           "layer": None if ckpt is None else args.layer,
           "checkpoint": None if ckpt is None else str(args.features),
           "checkpoint_episodes": None if ckpt is None else ckpt.get("episodes_done"),
           "training": training_record(ckpt),
           "config": cfg.to_dict(), "command": ["fewshot-mann", "knn", *argv], "seconds": round(seconds, 3),
           "date": time.strftime("%Y-%m-%d"), "device": str(device)}
    write_evaluation(out, args.json, args.plot, f"kNN, {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
