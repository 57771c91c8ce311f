"""Plots that compare like with like: kshot accuracy beside its baselines and chance, reliability, confusion.

``plot_kshot`` draws, for the rows of one kshot run: accuracy by shots of the model and of
every baseline on the same trials, with 95 % CIs and the chance line (1 / ways); the paper's
Omniglot curves never appear here (they are a different task); then, for each row, the
reliability diagram (accuracy against confidence in 15 bins, before and after the
checkpoint's temperature) and the confusion matrix (rows: truth; columns: answer).
"""
from __future__ import annotations

import numpy as np

from fewshot_mann.reporting.plots import by_instance_curves, pyplot as _pyplot, save_figure as _save


def _accuracy_panel(ax, rows: list[dict], baselines: list[dict], label: str) -> None:
    for ways in sorted({r["ways"] for r in rows}):
        mine = sorted((r for r in rows if r["ways"] == ways), key=lambda r: r["shots"])
        xs = [r["shots"] for r in mine]
        ax.errorbar(xs, [100 * r["accuracy"] for r in mine], yerr=[100 * r["ci95"] for r in mine], marker="o",
                    capsize=3, label=f"{label}, {ways}-way")
        for name in sorted({b["name"] for b in baselines if b["ways"] == ways}):
            base = sorted((b for b in baselines if b["ways"] == ways and b["name"] == name), key=lambda b: b["shots"])
            ax.errorbar([b["shots"] for b in base], [100 * b["accuracy"] for b in base],
                        yerr=[100 * b["ci95"] for b in base], marker="x", linestyle="--", capsize=2, alpha=0.8,
                        label=f"{name}, {ways}-way (same trials)")
        ax.axhline(100 / ways, color="grey", linestyle=":", label=f"chance, {ways}-way ({100 / ways:.0f} %)")
    ax.set_xlabel("shots (labelled images a class)")
    ax.set_ylabel("query accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted({r["shots"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title("accuracy: the model, its baselines, chance")


def _shots(row: dict) -> str:
    return f"{row['shots']}-shot" if isinstance(row["shots"], int) else str(row["shots"])


def _reliability_panel(ax, row: dict) -> None:
    c = row["calibration"]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, block in (("temperature 1", c["before"]), (f"temperature {c['temperature']:.3g}", c)):
        pts = [(b["confidence"], b["accuracy"]) for b in block["bins"] if b["count"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name}: ECE {block['ece']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{row['ways']}-way {_shots(row)} reliability (15 bins)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left")


def _confusion_panel(ax, row: dict) -> None:
    conf = row["confusion"]
    counts = np.asarray(conf["counts"], dtype=np.float64)
    used = np.flatnonzero(counts.sum(0) + counts.sum(1))
    counts = counts[np.ix_(used, used)]
    names = [conf["classes"][i] for i in used]
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(names))
    short = [n if len(n) <= 14 else n[:13] + "…" for n in names]
    ax.set_xticks(list(ticks), short, rotation=90, fontsize=5)
    ax.set_yticks(list(ticks), short, fontsize=5)
    if len(names) <= 12:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=4,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("answer")
    ax.set_ylabel("truth")
    ax.set_title(f"{row['ways']}-way {_shots(row)} confusion (share of row)", fontsize=9)


def plot_kshot(rows: list[dict], baselines: list[dict], path, label: str) -> None:
    """One PNG: the accuracy panel, then per row a reliability diagram and a confusion matrix."""
    plt = _pyplot()
    n = len(rows)
    fig = plt.figure(figsize=(10, 4 + 4 * n))
    grid = fig.add_gridspec(1 + n, 2)
    _accuracy_panel(fig.add_subplot(grid[0, :]), rows, baselines, label)
    for i, row in enumerate(rows):
        if "calibration" in row:
            _reliability_panel(fig.add_subplot(grid[1 + i, 0]), row)
        if "counts" in row.get("confusion", {}):  # not drawn for hundreds of classes ("nonzero" pairs)
            _confusion_panel(fig.add_subplot(grid[1 + i, 1]), row)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_by_instance_folder(out: dict, path, label: str) -> None:
    """``evaluate --plot`` on folder data: accuracy by instance of the model and of its baselines on the
    same episodes, the chance line (1 / ways; the 1st presentation of a class is a guess among the labels
    not yet told, so it may sit below chance), and, when present, the reliability diagram and confusion
    matrix. No paper or human curves: those are Omniglot's."""
    plt = _pyplot()
    trust = "calibration" in out and "counts" in out.get("confusion", {})
    fig = plt.figure(figsize=(10, 9 if trust else 4.5))
    grid = fig.add_gridspec(2 if trust else 1, 2)
    ax = fig.add_subplot(grid[0, :])
    by_instance_curves(ax, [(f"{label} ({out['episodes']} episodes, 95% CI)", out)], out.get("baselines", []),
                       1 / out["ways"])
    ax.set_xlabel("instance (presentation of a class in the episode; the 1st is a guess)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("held-out accuracy by instance: the model, its baselines, chance")
    if trust:
        row = {**out, "shots": "2nd+ presentation"}
        _reliability_panel(fig.add_subplot(grid[1, 0]), row)
        _confusion_panel(fig.add_subplot(grid[1, 1]), row)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
