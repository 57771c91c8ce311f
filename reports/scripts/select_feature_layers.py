"""Would earlier backbone stages help? Nearest centroid and logistic regression on pooled stage outputs.

For each image the bundled ``photos`` model reads (its backbone, preprocessing and precision), the head
features (1,280) and the global-average-pooled outputs of the last four block stages (Lite0: 80, 112, 192,
320 channels); then, on kshot's trials (5-way, 15 queries a class), nearest centroid and logistic
regression (C = 1, as the yardstick) on each, and on the sum of the logistic log-probabilities of the head
and 1-3 stages (an ensemble), and on their unit-length pooled outputs side by side (``concat``: what
``--feature-stages N`` reads), each with its trial-by-trial difference from logistic regression on the head
(the notebook) and the 95 % CI of that difference. A selection experiment on validation domains (seed 1), not a result.

    python reports/scripts/select_feature_layers.py --data-root ../shared/datasets/eurosat ../shared/datasets/clothing \
        --shots 1 5 --episodes 300 --seed 1 --json reports/results-photos/select-feature-layers.json
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
from fewshot_mann.models.backbones import build_backbone, preprocessing
from fewshot_mann.models.features import embed_precision
from fewshot_mann.reporting.records import environment
from photo_trials import photos_config, selection_arguments, trial_rows, unit


def stage_features(cfg, images: np.ndarray) -> dict[str, np.ndarray]:
    """{"head": (N,1280), "stage-1": pooled last stage, ... "stage-4"} float32."""
    net, _ = build_backbone(cfg.model.encoder, cfg.model.encoder_weights)
    net.eval().to(memory_format=torch.channels_last)
    prep = preprocessing(cfg.model.encoder)
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    pooled: dict[str, list] = {}
    for back in range(1, 5):
        net.blocks[len(net.blocks) - back].register_forward_hook(
            lambda m, i, o, k=f"stage-{back}": pooled.setdefault(k, []).append(o.float().mean((2, 3)).numpy()))
    bf16 = embed_precision(cfg.model) == "bf16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for first in range(0, len(images), 32):
            x = torch.from_numpy(images[first:first + 32]).float().div(255)
            pooled.setdefault("head", []).append(net(((x - mean) / std).contiguous(memory_format=torch.channels_last))
                                                 .float().numpy())
    return {k: np.concatenate(v) for k, v in pooled.items()}


def main() -> None:
    args = selection_arguments(argparse.ArgumentParser()).parse_args()
    torch.set_num_threads(2)
    rows = []
    for root in args.data_root:
        cfg = photos_config(root)
        bank = load_image_parts(cfg, progress=False).test
        views = {k: unit(v) for k, v in stage_features(cfg, bank.images).items()}
        feats = FeatureBank(views["head"], bank.offsets, bank.counts, list(bank.names))
        for shots in args.shots:
            rs, ys, rq, yq = trial_rows(feats, cfg, shots, args.episodes, args.seed)
            y = torch.from_numpy(ys)
            acc, logp = {}, {}
            for name, x in views.items():
                s, q = torch.from_numpy(x[rs]).double(), torch.from_numpy(x[rq]).double()
                acc[f"{name} centroid"] = NearestCentroid().fit(s, y, 5).scores(q)
                logp[name] = acc[f"{name} logistic"] = LogisticRegression().fit(s, y, 5).scores(q)
            for n in (1, 2, 3):
                parts = ["head"] + [f"stage-{i}" for i in range(1, n + 1)]
                acc[f"head + stages 1..{n} logistic ensemble"] = sum(logp[k] for k in parts)
                # the model's own reading (--feature-stages n): unit-length blocks side by side, unit length overall
                x = np.concatenate([views[k] for k in parts], axis=1) / np.sqrt(len(parts))
                s, q = torch.from_numpy(x[rs]).double(), torch.from_numpy(x[rq]).double()
                acc[f"head + stages 1..{n} concat centroid"] = NearestCentroid().fit(s, y, 5).scores(q)
                acc[f"head + stages 1..{n} concat logistic"] = LogisticRegression().fit(s, y, 5).scores(q)
            per_trial = {k: (v.argmax(-1).numpy() == yq).mean(-1) for k, v in acc.items()}
            result = {k: float(v.mean()) for k, v in per_trial.items()}
            base = per_trial["head logistic"]  # the notebook: logistic regression on the head features
            diff = {k: [float((v - base).mean()), float(1.96 * (v - base).std(ddof=1) / np.sqrt(len(v)))]
                    for k, v in per_trial.items() if k != "head logistic"}
            rows.append({"data_root": root, "shots": shots, "episodes": args.episodes, "seed": args.seed,
                         "accuracy": result, "minus_head_logistic_ci95": diff})
            print(root, f"{shots}-shot:", " | ".join(f"{k} {100 * v:.1f}" for k, v in result.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "command": ["python", "reports/scripts/select_feature_layers.py", *sys.argv[1:]],
                       "date": time.strftime("%Y-%m-%d"), "environment": environment()}, f, indent=1)


if __name__ == "__main__":
    main()
