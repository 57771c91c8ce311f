"""Hand-laid result tables whose every number comes from a committed JSON (``reports/tables.json``).

The reports' prose tables (a model beside its baselines, several seeds, another split) used to be typed
in; a number then had no file behind it, or kept an old value after its JSON was re-measured. Each such
table is now a block in a markdown file::

    <!-- table:NAME -->
    (generated: do not edit)
    <!-- /table:NAME -->

and an entry of the spec (paths relative to the repository, the folder above ``reports/``)::

    {"tables": [{"name": NAME, "file": "reports/README.md", "columns": [first column, ...],
                 "rows": [{"label": "...", "selection": "how this row was chosen", "cells": [CELL, ...]}]}]}

A CELL is ``null`` (empty), a string (copied: a published number with its source in the label, or
``–``), or a reference into a JSON file, rendered ``acc ± ci`` in %:

- ``{"json": P, "ways": W, "shots": K}``: the model's row of a ``kshot --json`` file;
- ``{"json": P, "baseline": NAME, "ways": W, "shots": K}``: one of its baselines (``"baselines"``);
- ``{"json": P, "instance": I}``: accuracy at the I-th instance (1-based) of an ``evaluate --json`` file
  (with ``"baseline": NAME``: that baseline's ``accuracy_by_instance``);
- a list of such references: the first one's accuracy, the others' in brackets, without CIs
  (``39.3 (38.9)``: seed 0, then another seed).

Every row ends with its selection and the JSON files its numbers come from; a reference that the
file does not hold is one error naming the table, the row and the file.
"""
from __future__ import annotations

import re
from pathlib import Path

from fewshot_mann.errors import UserError
from fewshot_mann.fileio import atomic_write_text, check_output_path
from fewshot_mann.reporting import inputs

SPEC_FILE = "tables.json"
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def percent(acc: float, ci: float) -> str:
    return f"{100 * acc:.1f} ± {100 * ci:.1f}"


def _where(table: str, row: str, path) -> str:
    return f"table {table!r}, row {row!r}, {path}"


def cell_text(cell, root: Path, cache: dict, where: str) -> tuple[str, list[str]]:
    """(markdown, the JSON paths it came from) of one cell."""
    if cell is None:
        return "", []
    if isinstance(cell, str):
        return cell, []
    if isinstance(cell, list) and cell:
        values, sources = [], []
        for ref in cell:
            text, source = cell_text(ref, root, cache, where)
            values.append(text.split(" ± ")[0])
            sources += source
        return values[0] + "".join(f" ({v})" for v in values[1:]), sources
    if not isinstance(cell, dict) or not isinstance(cell.get("json"), str):
        raise UserError(f"{where}: a cell is null, a string or an object with \"json\" (got {cell!r})")
    rel = cell["json"]
    if rel not in cache:
        cache[rel] = inputs.read_json(root / rel, "result JSON")
    data = cache[rel]
    try:
        if "instance" in cell:
            source = data
            if "baseline" in cell:
                source = next(b for b in data["baselines"] if b["name"] == cell["baseline"])
            i = int(cell["instance"]) - 1
            return percent(source["accuracy_by_instance"][i], source["ci95"][i]), [rel]
        rows = data["baselines"] if "baseline" in cell else data["results"]
        row = next(r for r in rows if r["ways"] == cell["ways"] and r["shots"] == cell["shots"]
                   and ("baseline" not in cell or r["name"] == cell["baseline"]))
        return percent(row["accuracy"], row["ci95"]), [rel]
    except (KeyError, IndexError, StopIteration, TypeError, ValueError):
        raise UserError(f"{where}: {rel} holds no {', '.join(f'{k}={v}' for k, v in cell.items() if k != 'json')}") from None


def render_table(table: dict, root: Path) -> str:
    """The markdown table of one spec entry."""
    name, cache = table.get("name", "?"), {}
    columns = list(table["columns"])
    lines = ["| " + " | ".join(columns + ["how selected", "JSON"]) + " |", "|" + "---|" * (len(columns) + 2)]
    for row in table["rows"]:
        label = row["label"]
        if len(row["cells"]) != len(columns) - 1:
            raise UserError(f"{_where(name, label, SPEC_FILE)}: {len(row['cells'])} cells for {len(columns) - 1} columns")
        texts, sources = [], []
        for cell in row["cells"]:
            text, found = cell_text(cell, root, cache, _where(name, label, SPEC_FILE))
            texts.append(text)
            sources += [s for s in found if s not in sources]
        files = ", ".join(f"`{s}`" for s in sources) or "– (published)"
        lines.append("| " + " | ".join([label, *texts, row.get("selection", "–"), files]) + " |")
    return "\n".join(lines) + "\n"


def read_spec(path: Path) -> list[dict]:
    spec = inputs.read_json(path, "tables spec")
    tables = spec.get("tables") if isinstance(spec, dict) else None
    if not isinstance(tables, list) or not all(isinstance(t, dict) and {"name", "file", "columns", "rows"} <= t.keys()
                                               for t in tables):
        raise UserError(f"{path}: expected {{\"tables\": [{{\"name\", \"file\", \"columns\", \"rows\"}}, ...]}}")
    return tables


def fill_blocks(text: str, rendered: dict[str, str]) -> str:
    """``text`` with the body of each block named in ``rendered`` replaced; other blocks kept."""
    def body(m):
        return m.group(1) + rendered[m.group("name")] + m.group(4) if m.group("name") in rendered else m.group(0)
    return BLOCK.sub(body, text)


def write_tables(reports: Path) -> list[Path]:
    """Regenerate every table of ``reports/tables.json`` in its markdown file; returns the files written.
    Every table is rendered and every file checked before any is written."""
    root = reports.resolve().parent
    by_file: dict[str, dict[str, str]] = {}
    for table in read_spec(reports / SPEC_FILE):
        by_file.setdefault(table["file"], {})[table["name"]] = render_table(table, root)
    updates = {}
    for rel, rendered in by_file.items():
        path = root / rel
        text = inputs.read_text(path, "report")
        missing = sorted(set(rendered) - {m.group("name") for m in BLOCK.finditer(text)})
        if missing:
            raise UserError(f"{path} has no block <!-- table:{missing[0]} --> ... <!-- /table:{missing[0]} -->")
        check_output_path(path, "--reports-dir")
        updates[path] = fill_blocks(text, rendered)
    for path, text in updates.items():
        atomic_write_text(path, text)
    return list(updates)
