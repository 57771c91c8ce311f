"""Choose the photo models' backbone on validation domains: the frozen features of each offline backbone read by
nearest centroid and logistic regression (the yardstick's feature baselines) on the same kshot trials.

    python reports/scripts/select_backbone.py --data-root ../shared/datasets/eurosat ../shared/datasets/clothing \
        --json reports/results-photos/select-backbone.json

Trials are kshot's (``evaluation_episodes(seed, i)``, 5-way, 15 queries a class, every class of the folder) at the
selection seed (1, not the reporting seed 0); each backbone reads the images with its own preprocessing. Each row
keeps every trial's accuracy, so backbones can be compared trial by trial (the same trials for all of them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from fewshot_mann.engine.baselines import BASELINES, kshot_baselines
from fewshot_mann.engine.loading import load_split_banks
from fewshot_mann.reporting.records import environment
from photo_trials import photos_config, selection_arguments

BACKBONES = ("timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite1", "timm:tf_efficientnet_lite2")


def main() -> None:
    p = selection_arguments(argparse.ArgumentParser())
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    args = p.parse_args()
    torch.set_num_threads(2)
    heads = tuple(b for b in BASELINES if b.inputs == "features")
    rows = []
    for root in args.data_root:
        for encoder in args.backbones:
            cfg = photos_config(root)  # the photo model's pipeline, another backbone
            cfg.model.encoder, cfg.model.weights_hash = encoder, None
            t0 = time.perf_counter()
            bank = load_split_banks(cfg, progress=False).test
            for shots in args.shots:
                ep = dataclasses.replace(cfg.episodes, ways=5)
                for res in kshot_baselines({"features": bank}, heads, ep, shots, args.episodes, args.seed, queries=15):
                    row = {"data_root": root, "backbone": encoder, **res.row(), "per_trial": res.per_episode.tolist()}
                    rows.append(row)
                    print(f"{root.rstrip('/').split('/')[-1]:<10} {encoder:<28} {shots}-shot {row['name']:<30} "
                          f"{100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f}", flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s with embedding)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "seed": args.seed, "episodes": args.episodes,
                       "command": ["python", "reports/scripts/select_backbone.py", *sys.argv[1:]],
                       "date": time.strftime("%Y-%m-%d"), "environment": environment()}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
