#!/usr/bin/env python
"""The memory lineage side by side: regenerate ``memory_comparison.md`` and its plots
from evaluation JSON files and training logs.

Inputs: evaluation JSON files (``evaluate.py --json`` or ``fewshot-mann knn --json``),
every ``*.json`` of ``--results`` (default ``reports/memory_results/``; the entry is named
by the file's stem) and any ``--eval NAME=PATH``. The training log of an evaluated
checkpoint is found next to it (``RUN/metrics.jsonl``, ``RUN/config.json``) or given by
``--metrics NAME=PATH``.

Outputs (``--out-dir``, default ``reports/``): ``memory_comparison.md`` (accuracy at
instances 1, 2, 3, 5, 10 with 95% CIs, parameters, training episodes/s, training time,
commands, dates), ``memory_comparison_by_instance.png`` and
``memory_comparison_learning_curves.png`` (held-out 2nd-instance accuracy vs episodes).

    python reports/make_memory_comparison.py --eval mann=results/mann.json --eval knn=results/knn.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fewshot_mann.config import Config  # noqa: E402
from fewshot_mann.errors import UserError  # noqa: E402
from fewshot_mann.fileio import atomic_write_text  # noqa: E402
from fewshot_mann.reporting.records import plot_by_instance, plot_learning_curves, read_metrics  # noqa: E402

INSTANCES = (1, 2, 3, 5, 10)
LEARNING_CURVE_INSTANCE = 2


def _pairs(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"{flag} expects NAME=PATH (got {item!r})")
        out[name] = Path(path)
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from exc


def parameter_count(result: dict) -> int | None:
    """Parameters of the evaluated model, rebuilt from the config in its JSON (0 for kNN)."""
    if result.get("method") == "knn":
        return 0
    if not isinstance(result.get("config"), dict):
        return None
    from fewshot_mann.models.registry import build_model, count_parameters
    return count_parameters(build_model(Config.from_dict(result["config"])))


def training_summary(result: dict, metrics: Path | None) -> dict:
    """Episodes, seconds in training steps, episodes/s, threads and command of the run behind
    ``result``, from its metrics.jsonl (the last training line up to the evaluated checkpoint:
    a run that went on after it was evaluated does not change its row) and config.json."""
    info = dict(result.get("training") or {})
    evaluated_at = info.get("episodes") or result.get("checkpoint_episodes")
    if metrics is not None and metrics.exists():
        train_lines = [m for m in read_metrics(metrics) if m.get("kind") == "train"
                       and (not evaluated_at or (m.get("episodes") or 0) <= evaluated_at)]
        if train_lines:
            info["episodes"] = train_lines[-1].get("episodes")
            info["train_seconds"] = train_lines[-1].get("train_seconds")
        run_config = metrics.parent / "config.json"
        if run_config.exists() and not info.get("command"):
            try:
                info["command"] = json.loads(run_config.read_text()).get("command")
            except ValueError:
                pass
    episodes, seconds = info.get("episodes"), info.get("train_seconds")
    info["episodes_per_second"] = episodes / seconds if episodes and seconds else None
    info["threads"] = ((result.get("config") or {}).get("train") or {}).get("threads")
    return info


def collect(evals: dict[str, Path], metrics: dict[str, Path]) -> list[dict]:
    entries = []
    for name, path in evals.items():
        result = _read_json(path)
        for key in ("accuracy_by_instance", "ci95", "episodes", "ways", "seed"):
            if key not in result:
                raise UserError(f"{path} is not an evaluation JSON (no {key!r}); write one with evaluate.py --json")
        run_metrics = metrics.get(name)
        if run_metrics is None and result.get("checkpoint"):
            sibling = Path(result["checkpoint"]).parent / "metrics.jsonl"
            run_metrics = sibling if sibling.exists() else None
        entries.append({"name": name, "path": path, "result": result, "metrics": run_metrics,
                        "parameters": parameter_count(result), "training": training_summary(result, run_metrics)})
    return entries


def _cell(result: dict, instance: int) -> str:
    acc, ci = result["accuracy_by_instance"], result["ci95"]
    if instance > len(acc):
        return "–"
    return f"{100 * acc[instance - 1]:.1f} ± {100 * ci[instance - 1]:.1f}"


def _duration(seconds) -> str:
    if not seconds:
        return "–"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _command(cmd) -> str:
    if not cmd:
        return "–"
    return "`" + (shlex.join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd)) + "`"


def protocol(result: dict) -> tuple:
    return (result.get("ways"), result.get("instances"), result.get("labels"), result.get("episodes"),
            result.get("seed"), result.get("split"), result.get("classes"))


def comparison_markdown(entries: list[dict]) -> str:
    cols = " | ".join(f"{i}{'st' if i == 1 else 'nd' if i == 2 else 'rd' if i == 3 else 'th'}" for i in INSTANCES)
    lines = ["# The memory lineage side by side", "",
             f"Regenerated by `python reports/make_memory_comparison.py` on {time.strftime('%Y-%m-%d')}. "
             "Held-out accuracy (%) ± 95% CI half-width (normal approximation over episodes) at each "
             "instance (presentation of a class in the episode).", ""]
    protocols = {protocol(e["result"]) for e in entries}
    if len(protocols) == 1:
        ways, instances, labels, episodes, seed, split, classes = next(iter(protocols))
        lines.append(f"All rows: the same {episodes} evaluation episodes (seed {seed}), {ways}-way, {instances} "
                     f"instances, {labels} labels, {split or 'test'} split ({classes} classes).")
    else:
        lines.append("**Warning: the rows were not evaluated on the same episodes** (ways, instances, labels, "
                     "episodes, seed, split, classes): " + "; ".join(
                         f"{e['name']}: {protocol(e['result'])}" for e in entries))
    lines += ["", f"| model | {cols} | parameters | training episodes | training episodes/s (threads) | "
              "training time | evaluated |", "|---|" + "---|" * (len(INSTANCES) + 5)]
    for e in entries:
        res, tr = e["result"], e["training"]
        params = "–" if e["parameters"] is None else f"{e['parameters']:,}"
        episodes = f"{tr['episodes']:,}" if tr.get("episodes") else "–"
        speed = "–" if not tr.get("episodes_per_second") else \
            f"{tr['episodes_per_second']:.1f} ({tr.get('threads') or 'default'})"
        lines.append(f"| **{e['name']}** | " + " | ".join(_cell(res, i) for i in INSTANCES)
                     + f" | {params} | {episodes} | {speed} | {_duration(tr.get('train_seconds'))} | "
                     f"{res.get('date', '–')} |")
    lines += ["", "Training time counts the training steps only (not the periodic evaluations); episodes/s "
              "is training episodes over that time. kNN rows have no trained parameters of their own.", "",
              "## Commands", ""]
    for e in entries:
        lines.append(f"- **{e['name']}**: train {_command(e['training'].get('command'))}; "
                     f"evaluate {_command(e['result'].get('command'))} ({e['path']})")
    return "\n".join(lines) + "\n"


def write_comparison(entries: list[dict], out_dir: Path) -> list[Path]:
    """Write the markdown table and the two plots into ``out_dir``; returns their paths."""
    if not entries:
        raise UserError("no evaluation JSON files given; pass --eval NAME=PATH or put *.json in --results")
    out_dir.mkdir(parents=True, exist_ok=True)
    md, by_instance, curves = (out_dir / "memory_comparison.md", out_dir / "memory_comparison_by_instance.png",
                               out_dir / "memory_comparison_learning_curves.png")
    atomic_write_text(md, comparison_markdown(entries))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", default=str(HERE / "memory_results"),
                   help="a folder whose *.json evaluation files are rows (named by file stem)")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=PATH", help="one more row")
    p.add_argument("--metrics", action="append", default=[], metavar="NAME=PATH",
                   help="the training metrics.jsonl of row NAME (default: next to its checkpoint)")
    p.add_argument("--out-dir", default=str(HERE))
    args = p.parse_args(argv)
    try:
        evals = {path.stem: path for path in sorted(Path(args.results).glob("*.json"))}
        evals.update(_pairs(args.eval, "--eval"))
        written = write_comparison(collect(evals, _pairs(args.metrics, "--metrics")), Path(args.out_dir))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
