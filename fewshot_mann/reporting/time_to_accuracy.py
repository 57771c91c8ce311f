"""Time to accuracy: when a run's validation checks first reach the paper's Table 1 MANN row.

A run's ``metrics.jsonl`` holds, for every in-training check on the validation classes, the
accuracy by instance and the training seconds spent so far (``train_seconds``: optimiser
steps only, checks and data loading excluded). ``first_met`` reads, for each instance the
paper reports (1st, 2nd, 3rd, 4th, 5th, 10th), the first check at or above its target.
"""
from __future__ import annotations

import json
from pathlib import Path

from fewshot_mann.reporting.paper import PAPER_INSTANCES, TABLE1

TARGETS = dict(zip(PAPER_INSTANCES, TABLE1["MANN"]))  # instance -> accuracy % (Santoro et al. 2016, Table 1)


def validation_checks(metrics: str | Path) -> list[dict]:
    """The run's checks on validation classes, in order: {episodes, train_seconds, accuracy_by_instance}."""
    rows = []
    for line in Path(metrics).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "eval" and row.get("classes", "validation") == "validation":
            rows.append(row)
    return rows


def first_met(checks: list[dict], targets: dict[int, float] = TARGETS) -> dict[int, dict | None]:
    """instance -> the first check whose accuracy at that instance reaches its target
    ({"episodes", "train_seconds", "accuracy"}), or None where no check did."""
    out: dict[int, dict | None] = {}
    for instance, target in targets.items():
        out[instance] = None
        for row in checks:
            acc = row["accuracy_by_instance"]
            if instance <= len(acc) and 100 * acc[instance - 1] >= target:
                out[instance] = {"episodes": row["episodes"], "train_seconds": row["train_seconds"],
                                 "accuracy": acc[instance - 1]}
                break
    return out


def format_first_met(met: dict[int, dict | None], targets: dict[int, float] = TARGETS) -> str:
    lines = [f"{'instance':>8} {'target %':>9} {'first met at':>24}"]
    for instance, hit in met.items():
        when = (f"{hit['train_seconds']:8.0f} s, {hit['episodes']:>9,} ep" if hit else "not met")
        lines.append(f"{instance:>8} {targets[instance]:>9.1f} {when:>24}")
    done = [h["train_seconds"] for h in met.values() if h]
    lines.append(f"every target met after {max(done):.0f} s of training" if len(done) == len(met)
                 else f"{len(done)} of {len(met)} targets met")
    return "\n".join(lines)


def plot_curves(checks: list[dict], path: str | Path, title: str = "time to accuracy (validation classes)") -> None:
    """Accuracy at each Table 1 instance vs training seconds, the targets dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewshot_mann.fileio import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seconds = [row["train_seconds"] for row in checks]
    for k, (instance, target) in enumerate(TARGETS.items()):
        colour = f"C{k}"
        ys = [100 * row["accuracy_by_instance"][instance - 1] for row in checks
              if instance <= len(row["accuracy_by_instance"])]
        ax.plot(seconds[:len(ys)], ys, marker=".", color=colour, label=f"instance {instance}")
        ax.axhline(target, color=colour, linestyle="--", linewidth=0.8, alpha=0.7)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title + "; dashed: Santoro et al. 2016, Table 1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=110))
    plt.close(fig)
