"""Where evaluate()'s time goes at batch 1,000 (omniglot-5way, C++ kernel): episode sampling, to_tensors,
the distinct-image projection, the recurrence (forward_projected), scoring;
the median of 3 rounds of 2,000 episodes (after one warm-up round), ms per episode.

    OMNIGLOT=DIR python reports/scripts/eval_breakdown.py THREADS   (from the repository root)
"""
import json
import statistics
import sys
import time

import torch
from common_eval import model_and_test_bank

from fewshot_mann.data.episodes import evaluation_episodes, to_tensors
from fewshot_mann.engine.evaluation import BankProjection, correct_steps, per_episode_instance_accuracy

torch.set_num_threads(int(sys.argv[1]))
model, cfg, test = model_and_test_bank()
ec = cfg.episodes
parts = {k: [] for k in ("sample", "to_tensors", "projection", "recurrence", "score")}
with torch.inference_mode():
    proj = BankProjection.for_model(model, test, "cpu")
    for rnd in range(4):
        tot = {k: 0.0 for k in parts}
        for first in range(0, 2000, 1000):
            t0 = time.perf_counter()
            drawn = evaluation_episodes(test, ec, 0, first, 1000)
            t1 = time.perf_counter()
            batch = to_tensors(drawn, ec, "cpu")
            t2 = time.perf_counter()
            rows = proj.rows(drawn.image_index)
            t3 = time.perf_counter()
            logits = model.forward_projected(rows, batch.label_inputs)
            t4 = time.perf_counter()
            per_episode_instance_accuracy(correct_steps(logits, batch.targets, ec), batch.instance, ec.instances)
            t5 = time.perf_counter()
            for k, a, b in zip(parts, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
                tot[k] += b - a
        if rnd:  # the first round warms up
            for k in parts:
                parts[k].append(tot[k])
med = {k: round(1000 * statistics.median(v) / 2000, 4) for k, v in parts.items()}  # ms per episode
total = sum(med.values())
print(json.dumps({"ms_per_episode": med, "total_ms": round(total, 4), "episodes_per_s": round(1000 / total, 1),
                  "forward_only_episodes_per_s": round(1000 / med["recurrence"], 1)}))
