"""Fit a checkpoint's calibration record (temperature, unknown threshold, unflagged accuracy) on validation
episodes and write the checkpoint with it (``engine/calibrate.py`` says what is fitted):

    python reports/scripts/calibrate.py CHECKPOINT OUT.pt --data-root DIR [DIR ...] [--ways 5] [--shots 1 5]
        [--queries 15] [--unknown-queries 15] [--episodes 600] [--seed 1000] [--known-kept 0.95] [--finetune STEPS]

Each ``--data-root`` is a class-per-folder validation domain (every class used). Pick domains that
the results will not be reported on, and a seed other than the reporting one (kshot's default is 0).
``kshot`` and ``predict`` then read the record from OUT.pt; rerun this after retraining a model.
``--finetune STEPS``: fit the record of answers fine-tuned STEPS steps to each support set (``kshot --finetune``),
kept beside the checkpoint's record (``"finetuned"`` in it): its temperatures, and its unknown thresholds fitted on
outside-class queries read through each trial's tuned backbone (records fitted before 2026-12-07 hold none).
"""
import argparse
import dataclasses
import sys
from pathlib import Path

from fewshot_mann.engine.loading import load_image_parts, load_split_banks
from fewshot_mann.fewshot.finetune import Finetuner, settings_for
from fewshot_mann.reporting.calibration import checkpoint_calibration
from fewshot_mann.data.episodes import with_ways
from fewshot_mann.config import answers_any_ways
from fewshot_mann.engine.calibrate import fit_calibration, with_calibration
from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--data-root", nargs="+", required=True)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--unknown-queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--known-kept", type=float, default=0.95)
    p.add_argument("--finetune", type=int, default=0, metavar="STEPS")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    model = load_model_from_checkpoint(ckpt, "cpu")
    banks, finetuners = {}, {}
    for root in args.data_root:
        cfg = load_checkpoint(args.checkpoint)["config_obj"]
        cfg.data.dataset, cfg.data.data_root, cfg.data.test_root, cfg.data.test_classes = "folder", root, None, "all"
        cfg.episodes.instances = min(cfg.episodes.instances, min(args.shots) + args.queries)
        banks[Path(root).name] = load_split_banks(cfg, progress=False).part("test")
        if args.finetune:  # the images of the same classes, in the same order, for kshot's fine-tuning
            images = load_image_parts(cfg, progress=False).part("test")
            finetuners[Path(root).name] = Finetuner(cfg.model, settings_for(args.finetune), images.images, seed=args.seed)
    episodes_cfg = with_ways(cfg.episodes, args.ways, answers_any_ways(cfg))
    record = fit_calibration(model, banks, episodes_cfg, args.shots, args.episodes, args.seed, args.queries,
                             args.unknown_queries, args.known_kept, finetuners=finetuners or None)
    if args.finetune:  # beside the checkpoint's own record, which frozen answers keep using
        own = checkpoint_calibration(ckpt)
        record = dataclasses.replace(own, finetuned=record)
    out = with_calibration(ckpt, record)
    out.pop("format", None)
    out.pop("version", None)
    save_checkpoint(args.out, out)
    print(f"wrote {args.out}: calibration fitted on {(record.finetuned or record).fitted_on}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
