"""Plots and tables of results: accuracy by instance against the paper, learning curves."""
from __future__ import annotations

import io
import json
from pathlib import Path

from fewshot_mann.engine.evaluation import PAPER_INSTANCES, PAPER_ROWS
from fewshot_mann.fileio import atomic_write_bytes


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_by_instance(results: list[tuple[str, dict]], path, paper_rows=("MANN", "Human"),
                     title: str = "Held-out accuracy by instance") -> None:
    """Accuracy vs instance with 95% CI bands, and the paper's rows (Table 1) for reference."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, res in results:
        acc = [100 * a for a in res["accuracy_by_instance"]]
        ci = [100 * c for c in res["ci95"]]
        xs = list(range(1, len(acc) + 1))
        line, = ax.plot(xs, acc, marker="o", label=label)
        ax.fill_between(xs, [a - c for a, c in zip(acc, ci)], [a + c for a, c in zip(acc, ci)],
                        color=line.get_color(), alpha=0.2)
    for name in paper_rows:
        ax.plot(PAPER_INSTANCES, PAPER_ROWS[name], linestyle="--", marker="x", alpha=0.7,
                label=f"paper: {name} (Santoro et al. 2016, Table 1)")
    ax.set_xlabel("instance (presentation of a class in the episode)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def training_record(ckpt: dict | None) -> dict | None:
    """What an evaluation JSON records about the checkpoint's training run."""
    if ckpt is None:
        return None
    record = {"episodes": ckpt.get("episodes_done"), "command": ckpt.get("command"),
              "train_seconds": (ckpt.get("state") or {}).get("train_seconds")}
    origin = ckpt.get("init_from")
    if isinstance(origin, dict):  # weights that started from another run (--init-from)
        record["init_from"] = origin
        if isinstance(record["episodes"], int) and isinstance(origin.get("episodes"), int):
            record["episodes_including_init"] = record["episodes"] + origin["episodes"]
    return record


def write_evaluation(out: dict, json_path, plot_path, label: str) -> None:
    """Write an evaluation's JSON (``out``) and/or its accuracy-by-instance plot; say so."""
    if json_path:
        from fewshot_mann.fileio import atomic_write_json
        atomic_write_json(json_path, out)
        print(f"wrote {json_path}")
    if plot_path:
        plot_by_instance([(f"{label} ({out['episodes']} episodes, 95% CI)", out)], plot_path)
        print(f"wrote {plot_path}")


def read_metrics(path) -> list[dict]:
    lines = []
    for raw in Path(path).read_text().splitlines():
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a torn last line never stops a report
    return lines


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
