"""The memory lineage side by side: ``memory_comparison.md`` and its two plots.

Rows: evaluation JSON files (``evaluate --json`` or ``knn --json``), each named, with
the training log (``metrics.jsonl``) of the evaluated run where there is one: found next
to the checkpoint (``RUN/metrics.jsonl``, ``RUN/config.json``) or given. The committed
report's rows are listed in ``reports/memory_comparison.json``::

    {"rows": [{"name": "LRUA (mann)", "eval": "results/mann-onehot-5way.json",
               "metrics": "runs/mann-ks/metrics.jsonl"}, ...]}

(paths relative to that file's folder). Outputs: ``memory_comparison.md`` (accuracy at
instances 1, 2, 3, 5, 10 with 95% CIs, parameters, training episodes/s, training time,
commands, dates; a warning when rows were not evaluated on the same episodes),
``memory_comparison_by_instance.png`` and ``memory_comparison_learning_curves.png``
(held-out 2nd-instance accuracy vs episodes).
"""
from __future__ import annotations

from pathlib import Path

from fewshot_mann.config import Config
from fewshot_mann.config_legacy import OLD_COMMANDS_NOTE
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import atomic_write_text
from fewshot_mann.reporting import inputs
from fewshot_mann.reporting.plots import plot_by_instance, plot_learning_curves
from fewshot_mann.reporting.run_logs import read_metrics
from fewshot_mann.reporting.tables import accuracy_cell, command_cell, duration, instance_columns

INSTANCES = (1, 2, 3, 5, 10)
LEARNING_CURVE_INSTANCE = 2
ROWS_FILE = "memory_comparison.json"


def read_rows(path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({name: evaluation JSON}, {name: metrics.jsonl})`` from a rows file (see the module doc)."""
    rows = inputs.rows(inputs.read_json(path, "rows file"), path)
    evals = {r["name"]: path.parent / r["eval"] for r in rows}
    metrics = {r["name"]: path.parent / r["metrics"] for r in rows if r.get("metrics")}
    return evals, metrics


def parameter_count(result: dict) -> int | None:
    """Parameters of the evaluated model, rebuilt from the config in its JSON (0 for kNN)."""
    if result.get("method") == "knn":
        return 0
    if not isinstance(result.get("config"), dict):
        return None
    from fewshot_mann.models.registry import parameters_on_meta
    try:  # every field type- and bound-checked, then counted on meta: nothing is allocated
        return parameters_on_meta(Config.from_dict(result["config"]))
    except UserError as exc:
        raise UserError(f"{result.get('_path', 'an evaluation JSON')}: its config: {exc}") from exc


def training_summary(result: dict, metrics: Path | None) -> dict:
    """Episodes, seconds in training steps, episodes/s, threads and command of the run behind
    ``result``, from its metrics.jsonl (the last training line up to the evaluated checkpoint:
    a run that went on after it was evaluated does not change its row) and config.json."""
    info = dict(result.get("training") or {})
    evaluated_at = info.get("episodes") or result.get("checkpoint_episodes")
    if metrics is not None and metrics.exists():
        train_lines = [m for m in read_metrics(metrics) if m.get("kind") == "train"
                       and isinstance(m.get("episodes"), (int, float)) and isinstance(m.get("train_seconds"), (int, float))
                       and (not evaluated_at or m["episodes"] <= evaluated_at)]
        if train_lines:
            info["episodes"] = train_lines[-1].get("episodes")
            info["train_seconds"] = train_lines[-1].get("train_seconds")
        run_config = metrics.parent / "config.json"
        if run_config.exists() and not info.get("command"):
            info["command"] = inputs.config_command(run_config)
    episodes, seconds = info.get("episodes"), info.get("train_seconds")
    info["episodes_per_second"] = episodes / seconds if episodes and seconds else None
    info["threads"] = ((result.get("config") or {}).get("train") or {}).get("threads")
    return info


def collect(evals: dict[str, Path], metrics: dict[str, Path]) -> list[dict]:
    """One entry per row: its result, training log, parameter count and training summary."""
    entries = []
    for name, path in evals.items():
        result = {**inputs.evaluation_file(path), "_path": str(path)}
        run_metrics = metrics.get(name)
        if run_metrics is None and result.get("checkpoint"):
            sibling = Path(result["checkpoint"]).parent / "metrics.jsonl"
            run_metrics = sibling if sibling.exists() else None
        entries.append({"name": name, "path": path, "result": result, "metrics": run_metrics,
                        "parameters": parameter_count(result), "training": training_summary(result, run_metrics)})
    return entries


def protocol(result: dict) -> tuple:
    """What makes two evaluations comparable: the same episodes of the same classes."""
    return (result.get("ways"), result.get("instances"), result.get("labels"), result.get("episodes"),
            result.get("seed"), result.get("split"), result.get("classes"))


def protocol_line(entries: list[dict]) -> str:
    """The episodes all rows share, or a warning naming each row's protocol."""
    protocols = {protocol(e["result"]) for e in entries}
    if len(protocols) == 1:
        ways, instances, labels, episodes, seed, split, classes = next(iter(protocols))
        return (f"All rows: the same {episodes} evaluation episodes (seed {seed}), {ways}-way, {instances} "
                f"instances, {labels} labels, {split or 'test'} split ({classes} classes).")
    return ("**Warning: the rows were not evaluated on the same episodes** (ways, instances, labels, "
            "episodes, seed, split, classes): " + "; ".join(f"{e['name']}: {protocol(e['result'])}" for e in entries))


def comparison_row(entry: dict) -> str:
    """A row's accuracy at INSTANCES, parameters, training budget, speed and time, evaluation date."""
    res, tr = entry["result"], entry["training"]
    params = "–" if entry["parameters"] is None else f"{entry['parameters']:,}"
    episodes = f"{tr['episodes']:,}" if tr.get("episodes") else "–"
    speed = "–" if not tr.get("episodes_per_second") else \
        f"{tr['episodes_per_second']:.1f} ({tr.get('threads') or 'default'})"
    return (f"| **{entry['name']}** | " + " | ".join(accuracy_cell(res, i) for i in INSTANCES)
            + f" | {params} | {episodes} | {speed} | {duration(tr.get('train_seconds'))} | {res.get('date', '–')} |")


def comparison_markdown(entries: list[dict], source: str = "the rows of `reports/memory_comparison.json`") -> str:
    """The whole page: how it was made, the shared protocol, the table, each row's commands."""
    lines = ["# The memory lineage side by side", "",
             f"Regenerated by `fewshot-mann report` from {source}. "
             "Held-out accuracy (%) ± 95% CI half-width (normal approximation over episodes) at each "
             "instance (presentation of a class in the episode).", "", protocol_line(entries)]
    lines += ["", f"| model | {instance_columns(INSTANCES)} | parameters | training episodes | "
              "training episodes/s (threads) | training time | evaluated |", "|---|" + "---|" * (len(INSTANCES) + 5)]
    lines += [comparison_row(e) for e in entries]
    lines += ["", "Training time counts the training steps only (not the periodic evaluations); episodes/s "
              "is training episodes over that time. kNN rows have no trained parameters of their own.", "",
              "## Commands", "", OLD_COMMANDS_NOTE, ""]
    for e in entries:
        lines.append(f"- **{e['name']}**: train {command_cell(e['training'].get('command'))}; "
                     f"evaluate {command_cell(e['result'].get('command'))} ({e['path']})")
    return "\n".join(lines) + "\n"


def write_comparison(entries: list[dict], out_dir: Path, source: str = "the rows of `reports/memory_comparison.json`"
                     ) -> list[Path]:
    """Write the markdown table and the two plots into ``out_dir``; returns their paths."""
    if not entries:
        raise UserError(f"no evaluation JSON files given; pass --eval NAME=PATH or list rows in {ROWS_FILE}")
    out_dir.mkdir(parents=True, exist_ok=True)
    md, by_instance, curves = (out_dir / "memory_comparison.md", out_dir / "memory_comparison_by_instance.png",
                               out_dir / "memory_comparison_learning_curves.png")
    atomic_write_text(md, comparison_markdown(entries, source))
    paper = all((e["result"].get("ways"), e["result"].get("labels")) == (5, "onehot") for e in entries)
    plot_by_instance([(e["name"], e["result"]) for e in entries], by_instance,
                     paper_rows=("MANN",) if paper else (), title="Held-out accuracy by instance (95% CI)")
    written = [md, by_instance]
    runs = [(e["name"], str(e["metrics"])) for e in entries if e["metrics"] is not None]
    if runs:
        plot_learning_curves(runs, curves, instance=LEARNING_CURVE_INSTANCE,
                             title="Held-out 2nd-instance accuracy during training")
        written.append(curves)
    return written
