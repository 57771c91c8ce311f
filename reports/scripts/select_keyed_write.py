"""Choose the photos model's write (mean / logistic) and "unseen label" score on the validation domains
(evaluate's episodes, 5-way x 6 instances, selection seed 1, 300 episodes): accuracy by instance, each value.

    python reports/scripts/select_keyed_write.py 0,4,5,6 > reports/results-photos/select-keyed-write.log

A second argument, the read power (``--read-power``, models/keyed.py), and a third, the writes to try (default
``mean,logistic``), re-select the unseen score for it:

    python reports/scripts/select_keyed_write.py 5,6,7,8,9 0.1 logistic > reports/results-photos/select-unseen-power.log
"""
import sys

import torch

from fewshot_mann.engine.loading import load_split_banks
from fewshot_mann.engine.evaluation import evaluate
from fewshot_mann.models.registry import build_model
from photo_trials import photos_config

torch.set_num_threads(1)

POWER = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
WRITES = sys.argv[3].split(",") if len(sys.argv) > 3 else ["mean", "logistic"]
for ds in ("eurosat", "clothing"):
    cfg = photos_config(f"../shared/datasets/{ds}")
    bank = load_split_banks(cfg, progress=False).test
    cfg.model.read_power = POWER
    for write in WRITES:
        cfg.model.keyed_write = write
        model = build_model(cfg).eval()
        for u in map(float, sys.argv[1].split(",")):
            with torch.no_grad():
                model.unseen.fill_(u)
            r = evaluate(model, bank, cfg.episodes, episodes=300, seed=1)
            print(ds, write, u, " ".join(f"{100*a:.1f}" for a in r["accuracy_by_instance"]), f"all {100*r['accuracy']:.1f}", flush=True)
