"""Choose ``--finetune``'s recipe on validation domains: fine-tuned vs frozen features on the same kshot trials.

    python reports/scripts/select_finetune.py --data-root ../shared/datasets/eurosat --shots 5 --episodes 60 \
        --seed 1 --grid "steps=0,20,40 lr=1e-3" --json reports/results-finetune/select-eurosat-5shot.json

Trials are kshot's (``evaluation_episodes(seed, i)``, 5-way, 15 queries a class); the selection seed is
not the reporting seed (0). Each grid point is a ``FinetuneSettings``, its tuned features read by nearest
centroid, logistic regression and the tuned cosine classifier (``steps=0``: the frozen features, i.e. the
yardstick's baselines on the same trials).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time

import numpy as np
import torch

from fewshot_mann.data.episodes import evaluation_episodes
from fewshot_mann.engine.checkpoint import load_checkpoint
from fewshot_mann.engine.evaluation import summarise
from fewshot_mann.fewshot.finetune import HEADS, Finetuner, FinetuneSettings, finetuned_scores
from fewshot_mann.reporting.records import environment


def grid(text: str) -> list[FinetuneSettings]:
    axes = {}
    for part in text.split():
        k, _, v = part.partition("=")
        kind = type(getattr(FinetuneSettings(), k))
        axes[k] = [kind(x) for x in v.split(",")]
    keys = list(axes)
    return [FinetuneSettings(**dict(zip(keys, combo))) for combo in itertools.product(*axes.values())]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="photos")
    p.add_argument("--data-root", required=True)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--grid", default="steps=0,40")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(2)

    from fewshot_mann.engine.loading import load_image_parts

    cfg = load_checkpoint(args.checkpoint)["config_obj"]
    cfg.data.dataset, cfg.data.data_root, cfg.data.test_root, cfg.data.test_classes = "folder", args.data_root, None, "all"
    bank = load_image_parts(cfg, progress=False).test
    ep_cfg = dataclasses.replace(cfg.episodes, ways=args.ways, instances=args.shots + args.queries)
    drawn = evaluation_episodes(bank, ep_cfg, args.seed, 0, args.episodes)
    settings = grid(args.grid)
    caches = {}
    per = {(s, h): [] for s in settings for h in HEADS}
    t0 = time.perf_counter()
    for e in range(args.episodes):
        sup = drawn.instance[e] < args.shots
        rows_s, y_s = drawn.image_index[e, sup], drawn.labels[e, sup]
        rows_q, y_q = drawn.image_index[e, ~sup], drawn.labels[e, ~sup]
        for s in settings:
            key = (s.tail_stages, s.views)
            if key not in caches:
                caches[key] = Finetuner(cfg.model, s, bank.images, seed=args.seed).cache
            for h, sc in finetuned_scores(caches[key], rows_s, y_s, rows_q, args.ways, s, seed=[args.seed, e]).items():
                per[(s, h)].append(float((sc.argmax(-1).numpy() == y_q).mean()))
        if e % 10 == 9:
            print(f"{e + 1} trials, {time.perf_counter() - t0:.0f} s:",
                  "; ".join(f"{_short(s)} {h} {100 * np.mean(v):.1f}" for (s, h), v in per.items()), flush=True)
    rows = []
    for (s, h), v in per.items():
        mean, ci = summarise(np.asarray(v)[:, None])
        rows.append({"settings": dataclasses.asdict(s), "head": h, "accuracy": mean[0], "ci95": ci[0],
                     "per_trial": v})
        print(f"{_short(s) + ' ' + h:<60} {100 * mean[0]:.1f} ± {100 * ci[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data_root": args.data_root, "ways": args.ways, "shots": args.shots, "queries": args.queries,
                       "episodes": args.episodes, "seed": args.seed, "rows": rows, "seconds": time.perf_counter() - t0,
                       "command": ["python", "reports/scripts/select_finetune.py", *__import__("sys").argv[1:]],
                       "date": time.strftime("%Y-%m-%d"), "environment": environment()}, f, indent=1)


def _short(s: FinetuneSettings) -> str:
    d = FinetuneSettings()
    return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(s).items() if v != getattr(d, k)) or "default"


if __name__ == "__main__":
    main()
