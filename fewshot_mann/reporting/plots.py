"""The reports' plots: accuracy by instance against the paper, learning curves."""
from __future__ import annotations

import io
from pathlib import Path

from fewshot_mann.fileio import atomic_write_bytes
from fewshot_mann.reporting.paper import PAPER_INSTANCES, TABLE1
from fewshot_mann.reporting.run_logs import read_metrics


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


pyplot, save_figure = _pyplot, _save  # for the other plot modules (reporting/trust_plots.py)


def by_instance_curves(ax, results: list[tuple[str, dict]], baselines: list[dict] = (),
                       chance: float | None = None) -> None:
    """Accuracy-by-instance curves with 95 % CI bands on ``ax``: each (label, result) solid, each baseline row
    (``"baselines"`` of an evaluation JSON) dashed as "(same episodes)", and the chance line (a fraction)."""
    for (label, res), style in [(r, "-") for r in results] + [((f"{b['name']} (same episodes)", b), "--")
                                                              for b in baselines]:
        acc = [100 * a for a in res["accuracy_by_instance"]]
        ci = [100 * c for c in res["ci95"]]
        xs = list(range(1, len(acc) + 1))
        line, = ax.plot(xs, acc, marker="o" if style == "-" else "x", linestyle=style, label=label)
        ax.fill_between(xs, [a - c for a, c in zip(acc, ci)], [a + c for a, c in zip(acc, ci)],
                        color=line.get_color(), alpha=0.2 if style == "-" else 0.15)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle=":", label=f"chance ({100 * chance:.0f} %)")


def plot_by_instance(results: list[tuple[str, dict]], path, paper_rows=("MANN", "Human"),
                     title: str = "Held-out accuracy by instance", baselines: list[dict] = (),
                     chance: float | None = None) -> None:
    """Accuracy vs instance with 95% CI bands, the paper's rows (Table 1) for reference, and, when given,
    the baselines on the same episodes (dashed) and the chance line (``chance``, a fraction)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_instance_curves(ax, results, baselines, chance)
    for name in paper_rows:
        ax.plot(PAPER_INSTANCES, TABLE1[name], linestyle="--", marker="x", alpha=0.7,
                label=f"paper: {name} (Santoro et al. 2016, Table 1)")
    ax.set_xlabel("instance (presentation of a class in the episode)" + (
        "; baselines answer only labels told so far" if baselines else ""))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def plot_learning_curves(runs: list[tuple[str, str]], path, instance: int = 2,
                         title: str | None = None) -> None:
    """Held-out accuracy at ``instance`` (1-based) vs training episodes for each run's metrics.jsonl."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, metrics in runs:
        evals = [m for m in read_metrics(metrics) if m.get("kind") == "eval"]
        if not evals:
            continue
        xs = [m["episodes"] for m in evals]
        ys = [100 * m["accuracy_by_instance"][instance - 1] for m in evals]
        ax.plot(xs, ys, label=label)
    ax.set_xlabel("training episodes")
    ax.set_ylabel(f"held-out accuracy at instance {instance} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"Learning curves (instance {instance})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
