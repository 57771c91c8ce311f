"""Validation learning curves of the convolutional MANNs (issue 19): accuracy at the 2nd and 10th
presentation vs training episodes, from the runs' metrics.jsonl (stages placed end to end).

    python reports/scripts/conv_curves.py   (from the repository root; writes reports/learning_curves_conv.png)
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RUNS = {  # label: [(metrics.jsonl, episodes before this stage)]
    "mann-conv-5way (santoro, 5-way)": [("reports/runs/mann-conv-5way/metrics.jsonl", 0)],
    "mann-conv-20way (santoro, 20-way)": [("reports/runs/mann-conv-20way/stage1-metrics.jsonl", 0),
                                          ("reports/runs/mann-conv-20way/metrics.jsonl", 100_000)],
    "lake-20way-mann (background alphabets, 20-way)": [("reports/runs/lake-20way/metrics.jsonl", 0)],
    "mann-conv-5way-nn (--memory-init features, 5-way)": [("reports/results-memory/runs/nn-start-5way/metrics.jsonl", 0)],
    "mann-conv-20way-nn (--memory-init features, 20-way)": [("reports/results-memory/runs/nn-start-20way/metrics.jsonl", 0)],
}


def checks(path: str, offset: int):
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "eval":
            yield offset + row["episodes"], row["accuracy_by_instance"]


fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
for label, stages in RUNS.items():
    points = sorted(p for path, offset in stages if Path(path).exists() for p in checks(path, offset))
    for ax, instance in zip(axes, (2, 10)):
        ax.plot([e for e, _ in points], [100 * acc[instance - 1] for _, acc in points], marker=".", label=label)
for ax, instance in zip(axes, (2, 10)):
    ax.set_title(f"instance {instance}, validation classes")
    ax.set_xlabel("training episodes")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("accuracy (%)")
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig("reports/learning_curves_conv.png", dpi=110)
print("wrote reports/learning_curves_conv.png")
