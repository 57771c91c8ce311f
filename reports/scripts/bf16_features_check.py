"""bfloat16 vs float32 backbone features: the same kshot trials scored on each (issue 33's condition for
``--embed-precision auto``: nearest-centroid accuracy within CI).

    python reports/scripts/bf16_features_check.py --data-root ../shared/datasets/eurosat ../shared/datasets/clothing \
        --episodes 600 --seed 0 --json reports/performance_bf16_features_check.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from fewshot_mann.data.bank import FeatureBank
from fewshot_mann.engine.evaluation import summarise
from fewshot_mann.engine.loading import load_image_parts
from fewshot_mann.fewshot.centroid import NearestCentroid
from fewshot_mann.fewshot.logistic import LogisticRegression
from fewshot_mann.models.features import embed_images
from fewshot_mann.reporting.records import environment
from photo_trials import photos_config, trial_rows, unit


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", nargs="+", required=True)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = []
    for root in args.data_root:
        cfg = photos_config(root)
        bank = load_image_parts(cfg, progress=False).test
        feats = {}
        for precision in ("fp32", "bf16"):
            cfg.model.embed_precision = precision
            feats[precision] = unit(embed_images(bank.images, cfg.model, progress=False))
        cos = (feats["fp32"] * feats["bf16"]).sum(1)
        fb = FeatureBank(feats["fp32"], bank.offsets, bank.counts, list(bank.names))
        for shots in (1, 5):
            rs, ys, rq, yq = trial_rows(fb, cfg, shots, args.episodes, args.seed)
            y = torch.from_numpy(ys)
            row = {"data_root": root, "shots": shots, "episodes": args.episodes, "seed": args.seed,
                   "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
            for precision, x in feats.items():
                s, q = torch.from_numpy(x[rs]).double(), torch.from_numpy(x[rq]).double()
                for head, clf in (("centroid", NearestCentroid()), ("logistic", LogisticRegression())):
                    acc = (clf.fit(s, y, 5).scores(q).argmax(-1).numpy() == yq).mean(1)
                    mean, ci = summarise(acc[:, None])
                    row[f"{precision} {head}"] = {"accuracy": mean[0], "ci95": ci[0]}
            rows.append(row)
            print(root, f"{shots}-shot", " | ".join(f"{k} {100 * v['accuracy']:.2f} ± {100 * v['ci95']:.2f}"
                                                   for k, v in row.items() if isinstance(v, dict)), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "command": ["python", "reports/scripts/bf16_features_check.py", *sys.argv[1:]],
                       "date": time.strftime("%Y-%m-%d"), "environment": environment()}, f, indent=1)


if __name__ == "__main__":
    main()
