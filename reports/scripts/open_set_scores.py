"""Which score tells an unknown class from the support's classes best? (issue 29's AUROC >= 0.80 target)

On kshot's trials (5-way, K shots, 15 queries a class; 15 queries a trial from classes outside it), the
AUROC of known-vs-unknown for several scores of the frozen features the bundled ``photos`` model reads
(unit length; which backbones below), all computed from the support set alone:

- centroid: the highest cosine to a class mean (what the keyed memory's top logit is, up to its scale);
- nn: the highest cosine to a support image; margin: top minus second centroid cosine;
- centred: the highest cosine to a class mean after subtracting the support's mean;
- mean-sim: the mean cosine to the support images; minus-mu / z: the centroid cosine minus (and divided by
  the spread of) the class's own leave-one-out cosines (K >= 2 only);
- power-P (session 13): the centroid score of the features raised elementwise to the power P, sign kept, unit
  length again (a power transform; ``--read-power``, models/keyed.py).

The features are the bundled model's (``photo_trials.photos_config``): EfficientNet-Lite0's head alone when
open-set-scores.json was written (2026-12-06); Lite0 and Lite2 with their last block stages, side by side, for
open-set-scores-power.json (2026-12-07):

    python reports/scripts/open_set_scores.py --data-root ../shared/datasets/eurosat ../shared/datasets/clothing \
        --shots 1 5 --episodes 600 --seed 1 --json reports/results-trust/open-set-scores-power.json

    python reports/scripts/open_set_scores.py --data-root ../shared/datasets/eurosat ../shared/datasets/clothing \
        --shots 1 5 --episodes 600 --seed 1 --json reports/results-trust/open-set-scores.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from fewshot_mann.data.episodes import evaluation_episodes
from fewshot_mann.engine.loading import load_split_banks
from fewshot_mann.reporting.records import environment
from photo_trials import photos_config, unit


POWERS = (0.5, 0.3, 0.2, 0.1, 0.05)


def centroids(S, ys, ways):
    """(ways, D) each class's mean support feature, unit length."""
    return unit(np.stack([S[ys == c].mean(0) for c in range(ways)]))


def scores(S, ys, Q, ways):
    C = centroids(S, ys, ways)
    cos = Q @ C.T
    top2 = np.sort(cos, 1)[:, -2:]
    m = S.mean(0)
    out = {"centroid": cos.max(1), "nn": (Q @ S.T).max(1), "margin": top2[:, 1] - top2[:, 0],
           "centred": (unit(Q - m) @ unit(C - m).T).max(1), "mean-sim": (Q @ S.T).mean(1)}
    for power in POWERS:
        ps, pq = (unit(np.sign(a) * np.abs(a) ** power) for a in (S, Q))
        out[f"power-{power}"] = (pq @ centroids(ps, ys, ways).T).max(1)
    if min(np.bincount(ys, minlength=ways)) >= 2:
        loo = [[float(S[i] @ unit(S[ys == c].sum(0) - S[i])) for i in np.flatnonzero(ys == c)] for c in range(ways)]
        mu, sd = np.array([np.mean(v) for v in loo]), np.array([np.std(v) for v in loo]) + 0.02
        out.update({"minus-mu": (cos - mu).max(1), "z": ((cos - mu) / sd).max(1)})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", nargs="+", required=True)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for root in args.data_root:
        cfg = photos_config(root)
        bank = load_split_banks(cfg, progress=False).test
        x = unit(bank.images)
        for shots in args.shots:
            ep = dataclasses.replace(cfg.episodes, ways=args.ways, instances=shots + 15)
            dr = evaluation_episodes(bank, ep, args.seed, 0, args.episodes)
            known, unknown = {}, {}
            for e in range(args.episodes):
                rng = np.random.default_rng([29, args.seed, e])
                sup = dr.instance[e] < shots
                outside = np.setdiff1d(np.arange(bank.num_classes), dr.classes[e])
                pool = np.concatenate([np.arange(bank.offsets[c], bank.offsets[c] + bank.counts[c]) for c in outside])
                S, ys = x[dr.image_index[e, sup]], dr.labels[e, sup]
                for name, v in scores(S, ys, x[dr.image_index[e, ~sup]], args.ways).items():
                    known.setdefault(name, []).append(v)
                for name, v in scores(S, ys, x[rng.choice(pool, 15, replace=False)], args.ways).items():
                    unknown.setdefault(name, []).append(v)
            aurocs = {}
            for name in known:
                k, u = np.concatenate(known[name]), np.concatenate(unknown[name])
                aurocs[name] = float(roc_auc_score(np.r_[np.ones(len(k)), np.zeros(len(u))], np.r_[k, u]))
            rows.append({"data_root": root, "ways": args.ways, "shots": shots, "episodes": args.episodes,
                         "seed": args.seed, "auroc": aurocs})
            print(root, f"{shots}-shot:", " | ".join(f"{k} {v:.3f}" for k, v in aurocs.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "command": ["python", "reports/scripts/open_set_scores.py", *__import__("sys").argv[1:]],
                       "date": time.strftime("%Y-%m-%d"), "environment": environment()}, f, indent=1)


if __name__ == "__main__":
    main()
