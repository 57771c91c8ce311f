"""The results section of ``reports/README.md`` and its plots, from evaluation JSON files.

Inputs (under the reports folder): ``results/*.json`` (``evaluate --json`` or ``knn
--json``), ``results-kshot/*.json`` (``kshot --json``) and ``runs/*/metrics.jsonl``
(training logs). Outputs: the text between the ``<!-- results:start -->`` and
``<!-- results:end -->`` markers of ``README.md`` (one table per ways/labels, the paper's
rows first, then the K-shot table), ``accuracy_by_instance_{ways}way_{labels}.png`` per
table, and ``learning_curves.png``.
"""
from __future__ import annotations

from pathlib import Path

from fewshot_mann.config_legacy import OLD_COMMANDS_NOTE
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import atomic_write_text
from fewshot_mann.reporting import inputs
from fewshot_mann.reporting.paper import PAPER_INSTANCES, TABLE1, TABLE2
from fewshot_mann.reporting.plots import plot_by_instance, plot_learning_curves
from fewshot_mann.reporting.tables import accuracy_cell, hours, instance_columns

START, END = "<!-- results:start -->", "<!-- results:end -->"
KSHOT_REFERENCE = (
    "\nFor reference (other methods' published numbers, 5-way 1-shot / 5-shot, 20-way 1-shot / 5-shot): "
    "Matching Networks 98.1 / 98.9 / 93.8 / 98.5, Prototypical Networks 98.8 / 99.7 / 96.0 / 98.9 "
    "(as quoted in the issue; their own splits and protocols with convolutional encoders, not the same protocol "
    "as above).\n")


def load_results(folder: Path) -> list[tuple[str, dict]]:
    """(file stem, result) of every evaluation JSON in ``folder``, by name; others are skipped."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            res = inputs.read_json(path, "evaluation JSON")
        except UserError:
            continue  # not JSON (or not a file): not a result
        if isinstance(res, dict) and "accuracy_by_instance" in res:
            out.append((path.stem, inputs.evaluation(res, path)))
    return out


def groups_of(results: list[tuple[str, dict]]) -> list[tuple[int, str]]:
    """The (ways, labels) of the results, one-hot tables first, then by ways."""
    return sorted({(r.get("ways"), r.get("labels")) for _, r in results}, key=lambda g: (g[1] != "onehot", g[0]))


def paper_rows(group: tuple[int, str]) -> list[str]:
    """The paper's rows for a table of (ways, labels): Table 1 for 5-way one-hot, Table 2 for strings."""
    lines = []
    if group == (5, "onehot"):
        for name, row in TABLE1.items():
            lines.append(f"| paper: {name} | " + " | ".join(f"{v:.1f}" for v in row)
                         + " | 100,000 | – | Santoro et al. 2016, Table 1 |")
    for name, row in TABLE2.get(group, {}).items():
        lines.append(f"| paper: {name} | " + " | ".join(f"{v:.1f}" for v in row)
                     + " | 100,000 | – | Santoro et al. 2016, Table 2 |")
    return lines


def result_row(name: str, res: dict) -> str:
    """One evaluation's row: accuracy at the paper's instances, training budget and time, command."""
    training = res.get("training") or {}
    eps = training.get("episodes_including_init", training.get("episodes"))
    cells = " | ".join(accuracy_cell(res, i) for i in PAPER_INSTANCES)
    if res.get("decode", "free") != "free":  # not the paper's protocol: say so in the row
        name = f"{name} (answers restricted to the labels shown so far)"
    evaluated = f"`{' '.join(res.get('command') or [])}` ({res.get('episodes')} episodes, {res.get('date', '?')})"
    if eps:
        return f"| **{name}** | {cells} | {eps:,} | {hours(training.get('train_seconds'))} | {evaluated} |"
    return f"| **{name}** | {cells} | – | – | {evaluated} |"


def results_table(results: list[tuple[str, dict]], group: tuple[int, str]) -> str:
    """The markdown table of one (ways, labels): the paper's rows, then each result of that group."""
    lines = [f"| model | {instance_columns(PAPER_INSTANCES)} | training episodes | training time | evaluation |",
             "|---|" + "---|" * (len(PAPER_INSTANCES) + 3), *paper_rows(group)]
    lines += [result_row(name, res) for name, res in results if (res.get("ways"), res.get("labels")) == group]
    return "\n".join(lines)


def kshot_lines(folder: Path) -> list[str]:
    """The standard N-way K-shot table from ``kshot --json`` files (none: no lines)."""
    paths = sorted(folder.glob("*.json"))
    if not paths:
        return []
    lines = ["### Standard N-way K-shot accuracy (protocol: `fewshot_mann/engine/kshot.py`)\n",
             "| model | N-way K-shot | accuracy (%) ± 95% CI | episodes | command |\n|---|---|---|---|---|"]
    for path in paths:
        data = inputs.kshot(inputs.read_json(path, "kshot JSON"), path)
        for row in data["results"]:
            lines.append(f"| **{path.stem}** | {row['ways']}-way {row['shots']}-shot | "
                         f"{100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f} | {row['episodes']} | "
                         f"`{' '.join(data['command'])}` ({data.get('date', '?')}) |")
    return lines + [KSHOT_REFERENCE]


def results_markdown(reports: Path, results: list[tuple[str, dict]]) -> str:
    """The whole generated section: a sentence on the protocol, one table per group, K-shot."""
    parts = ["Accuracy (%) ± 95% CI half-width on held-out classes, by instance. Regenerated by "
             "`fewshot-mann report` from `reports/results/*.json`. " + OLD_COMMANDS_NOTE + "\n"]
    for group in groups_of(results):
        parts.append(f"### {group[0]}-way, {group[1]} labels\n\n{results_table(results, group)}\n")
    parts += kshot_lines(reports / "results-kshot")
    return "\n".join(parts)


def replace_section(body: str, text: str) -> str:
    """``body`` with the text between the START and END markers replaced by ``text``."""
    return body.split(START)[0] + START + "\n" + text + "\n" + END + body.split(END, 1)[1]


def write_results_report(reports: Path) -> list[Path]:
    """Regenerate README.md's results section and the plots in ``reports``; returns what was written."""
    if not (reports / "results").is_dir():
        raise UserError(f"no folder {reports / 'results'} of evaluation JSON files (write them with evaluate --json)")
    results = load_results(reports / "results")
    written = []
    readme = reports / "README.md"
    body = inputs.read_text(readme, "report") if readme.exists() else f"# Results\n\n{START}\n{END}\n"
    if START in body and END in body:
        atomic_write_text(readme, replace_section(body, results_markdown(reports, results)))
        written.append(readme)
    for ways, labels in groups_of(results):
        chosen = [(n, r) for n, r in results
                  if (r.get("ways"), r.get("labels")) == (ways, labels) and r.get("decode", "free") == "free"]
        path = reports / f"accuracy_by_instance_{ways}way_{labels}.png"
        plot_by_instance(chosen, path, paper_rows=("MANN", "Human") if (ways, labels) == (5, "onehot") else (),
                         title=f"Held-out accuracy by instance, {ways}-way {labels} (95% CI)")
        written.append(path)
    runs = sorted((p.parent.name, str(p)) for p in (reports / "runs").glob("*/metrics.jsonl"))
    if runs:
        plot_learning_curves(runs, reports / "learning_curves.png")
        written.append(reports / "learning_curves.png")
    return written
