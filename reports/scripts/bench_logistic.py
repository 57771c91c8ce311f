"""Time the yardstick's logistic regression: the Newton step by a formed system against conjugate gradients
per problem size, and the by-instance baselines of ``evaluate`` on Omniglot (nearest centroid, logistic
regression; 5-way, 10 instances, the bundled model's test characters).

    python reports/scripts/bench_logistic.py --json reports/performance_logistic_2026-12-07.json

Problems are kshot support sets of the 423 test characters' 20x20 pixels (ways x shots, 5-way to 20-way), fitted
with ``fit_logistic`` once with every Newton step solved directly and once by conjugate gradients
(``logistic.DIRECT_SOLVE_MAX`` forced each way); the answers' largest log-probability difference is recorded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from fewshot_mann.engine.baselines import BASELINES, by_instance_baselines
from fewshot_mann.engine.checkpoint import load_checkpoint
from fewshot_mann.engine.loading import load_split_banks
from fewshot_mann.fewshot import logistic
from fewshot_mann.reporting.records import environment

SIZES = ((5, 5, 200), (5, 10, 200), (10, 5, 100), (20, 1, 100), (20, 5, 20))  # ways, shots, problems


def problems(bank, ways, shots, count, rng):
    xs, ys = [], []
    for _ in range(count):
        cls = rng.choice(bank.num_classes, ways, replace=False)
        rows = np.concatenate([bank.offsets[c] + rng.choice(bank.counts[c], shots, replace=False) for c in cls])
        xs.append(bank.images[rows].reshape(ways * shots, -1) / 255.0)
        ys.append(np.repeat(np.arange(ways), shots))
    return torch.tensor(np.stack(xs)), torch.tensor(np.stack(ys))


def fit_seconds(gram, y, ways, direct_max):
    saved = logistic.DIRECT_SOLVE_MAX
    logistic.DIRECT_SOLVE_MAX = direct_max
    try:
        t0 = time.perf_counter()
        a, b, _ = logistic.fit_logistic(gram, y, torch.ones(y.shape, dtype=torch.float64), ways)
        return time.perf_counter() - t0, (gram @ a + b.unsqueeze(1)).log_softmax(-1)
    finally:
        logistic.DIRECT_SOLVE_MAX = saved


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_checkpoint("omniglot-5way")["config_obj"]
    bank = load_split_banks(cfg, progress=False).test
    rng = np.random.default_rng(0)
    sizes = []
    for ways, shots, count in SIZES:
        x, y = problems(bank, ways, shots, count, rng)
        gram = x @ x.transpose(1, 2)
        direct, p_direct = fit_seconds(gram, y, ways, 10 ** 9)
        cg, p_cg = fit_seconds(gram, y, ways, 0)
        row = {"ways": ways, "shots": shots, "unknowns": ways * shots * ways + ways, "problems": count,
               "direct_ms_per_problem": 1000 * direct / count, "cg_ms_per_problem": 1000 * cg / count,
               "max_log_probability_difference": float((p_direct - p_cg).abs().max())}
        sizes.append(row)
        print(f"{ways}-way {shots}-shot ({row['unknowns']} unknowns): direct {row['direct_ms_per_problem']:.1f} ms, "
              f"CG {row['cg_ms_per_problem']:.1f} ms a problem; answers differ by {row['max_log_probability_difference']:.1e}",
              flush=True)
    by_instance = {}
    for b in (b for b in BASELINES if b.inputs == "pixels"):
        t0 = time.perf_counter()
        [res], _ = by_instance_baselines({"pixels": bank}, (b,), cfg.episodes, episodes=args.episodes, seed=0,
                                         batch_size=1000)
        by_instance[b.name] = {"seconds": time.perf_counter() - t0, "accuracy_by_instance": res["accuracy_by_instance"]}
        print(f"{b.name}: {by_instance[b.name]['seconds']:.1f} s for {args.episodes} episodes", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizes": sizes, "by_instance": by_instance, "episodes": args.episodes, "threads": args.threads,
                       "command": ["python", "reports/scripts/bench_logistic.py", *sys.argv[1:]],
                       "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": list(__import__("os").getloadavg()),
                       "environment": environment()}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
