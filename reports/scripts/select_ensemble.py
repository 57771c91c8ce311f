"""Would two or three ImageNet backbones read side by side beat one? Logistic regression and nearest centroid on
each offline backbone's features (its head and its last block stage pooled, ``--feature-stages 1``, each read with its
own preprocessing) and on their concatenations, on the same kshot trials, each with its trial-by-trial difference
from the notebook (logistic regression on Lite0's head features) and the 95 % CI of that difference. A selection
experiment on validation domains (seed 1), not a result.

    python reports/scripts/select_ensemble.py --data-root ../shared/datasets/eurosat ../shared/datasets/clothing \
        --episodes 300 --seed 1 --json reports/results-photos/select-ensemble.json

The features of an ensemble are each block at unit length side by side, the whole at unit length (``stages.join``):
what ``--encoder timm:A+timm:B --feature-stages 1`` reads, except that there one image size (the largest
member's) is read and resized for the others (``models/ensemble.py``; on eurosat the same accuracy within 0.1).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from fewshot_mann.data.bank import FeatureBank
from fewshot_mann.engine.loading import load_image_parts
from fewshot_mann.fewshot.centroid import NearestCentroid
from fewshot_mann.fewshot.logistic import LogisticRegression
from fewshot_mann.reporting.records import environment
from photo_trials import photos_config, selection_arguments, trial_rows, unit
from select_feature_layers import stage_features

BACKBONES = ("lite0", "lite1", "lite2")
READINGS = {  # name -> [(backbone, block)]
    "notebook: lite0 head": [("lite0", "head")],
    "lite0 head + stage": [("lite0", "head"), ("lite0", "stage-1")],
    "lite2 head": [("lite2", "head")],
    "lite2 head + stage": [("lite2", "head"), ("lite2", "stage-1")],
    "lite0 + lite2 heads": [("lite0", "head"), ("lite2", "head")],
    "lite0 + lite1, head + stage": [(b, k) for b in ("lite0", "lite1") for k in ("head", "stage-1")],
    "lite0 + lite2, head + stage": [(b, k) for b in ("lite0", "lite2") for k in ("head", "stage-1")],
    "lite0 + lite2, head + 2 stages": [(b, k) for b in ("lite0", "lite2") for k in ("head", "stage-1", "stage-2")],
    "lite0 + lite1 + lite2, head + stage": [(b, k) for b in BACKBONES for k in ("head", "stage-1")],
}


def backbone_features(root: str) -> tuple[dict, FeatureBank]:
    """{backbone: {block: (N, D) unit-length features}} of every image of the folder, and a bank of its rows."""
    out, bank = {}, None
    for b in BACKBONES:
        cfg = photos_config(root)
        cfg.model.encoder, cfg.model.weights_hash = f"timm:tf_efficientnet_{b}", ""
        images = load_image_parts(cfg, progress=False).test
        out[b] = {k: unit(v.astype(np.float64)) for k, v in stage_features(cfg, images.images).items()}
        bank = bank or FeatureBank(out[b]["head"], images.offsets, images.counts, list(images.names))
    return out, bank


def main() -> None:
    args = selection_arguments(argparse.ArgumentParser()).parse_args()
    torch.set_num_threads(2)
    rows = []
    for root in args.data_root:
        feats, bank = backbone_features(root)
        cfg = photos_config(root)
        for shots in args.shots:
            rs, ys, rq, yq = trial_rows(bank, cfg, shots, args.episodes, args.seed)
            y = torch.from_numpy(ys)
            per_trial = {}
            for name, blocks in READINGS.items():
                x = np.concatenate([feats[b][k] for b, k in blocks], axis=1) / np.sqrt(len(blocks))
                s, q = torch.from_numpy(x[rs]), torch.from_numpy(x[rq])
                for head, clf in (("logistic", LogisticRegression()), ("centroid", NearestCentroid())):
                    per_trial[f"{name} {head}"] = (clf.fit(s, y, 5).scores(q).argmax(-1).numpy() == yq).mean(-1)
            base = per_trial["notebook: lite0 head logistic"]
            diff = {k: [float((v - base).mean()), float(1.96 * (v - base).std(ddof=1) / np.sqrt(len(v)))]
                    for k, v in per_trial.items()}
            rows.append({"data_root": root, "shots": shots, "episodes": args.episodes, "seed": args.seed,
                         "accuracy": {k: float(v.mean()) for k, v in per_trial.items()},
                         "minus_notebook_ci95": diff})
            for k, v in per_trial.items():
                print(f"{root.rstrip('/').split('/')[-1]:<9} {shots}-shot {k:<45} {100 * v.mean():5.1f}  "
                      f"{100 * diff[k][0]:+.1f} ± {100 * diff[k][1]:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "command": ["python", "reports/scripts/select_ensemble.py", *sys.argv[1:]],
                       "date": time.strftime("%Y-%m-%d"), "environment": environment()}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
