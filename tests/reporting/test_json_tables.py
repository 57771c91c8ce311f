"""``fewshot-mann report --only tables``: a hand-laid table is regenerated from the JSON files it names,
changes when a JSON changes, keeps the text around it, and a reference a JSON does not hold is one line."""
from __future__ import annotations

import json

import pytest

from fewshot_mann.cli import report


def kshot_json(acc1, ci1=0.008, nc1=0.98):
    return {"results": [{"ways": 5, "shots": 1, "accuracy": acc1, "ci95": ci1, "episodes": 100},
                        {"ways": 5, "shots": 5, "accuracy": 0.97, "ci95": 0.004, "episodes": 100}],
            "baselines": [{"name": "nearest-centroid-features", "ways": 5, "shots": 1, "accuracy": nc1, "ci95": 0.003}],
            "command": ["fewshot-mann", "kshot"], "date": "2026-12-06"}


def make_repo(tmp_path, acc1=0.882):
    reports = tmp_path / "reports"
    (reports / "results-kshot").mkdir(parents=True)
    (reports / "results-by-instance").mkdir()
    (reports / "results-kshot" / "m.json").write_text(json.dumps(kshot_json(acc1)))
    (reports / "results-kshot" / "m1.json").write_text(json.dumps(kshot_json(0.871)))
    (reports / "results-by-instance" / "m.json").write_text(json.dumps({"accuracy_by_instance": [0.348, 0.801], "ci95": [0.012, 0.007]}))
    spec = {"tables": [{"name": "conv", "file": "reports/README.md",
                        "columns": ["model", "5-way 1-shot", "5-way 5-shot", "2nd instance"],
                        "rows": [{"label": "m", "selection": "validation classes",
                                  "cells": [{"json": "reports/results-kshot/m.json", "ways": 5, "shots": 1},
                                            {"json": "reports/results-kshot/m.json", "ways": 5, "shots": 5},
                                            {"json": "reports/results-by-instance/m.json", "instance": 2}]},
                                 {"label": "nearest centroid", "selection": "same trials",
                                  "cells": [{"json": "reports/results-kshot/m.json", "baseline": "nearest-centroid-features",
                                             "ways": 5, "shots": 1}, None, "–"]},
                                 {"label": "ProtoNets (published)", "cells": ["98.8", "99.7", None]},
                                 {"label": "seeds", "selection": "seed 0 (seed 1)",
                                  "cells": [[{"json": "reports/results-kshot/m.json", "ways": 5, "shots": 1},
                                             {"json": "reports/results-kshot/m1.json", "ways": 5, "shots": 1}], None, None]}]}]}
    (reports / "tables.json").write_text(json.dumps(spec))
    (reports / "README.md").write_text("# R\n\nabove\n<!-- table:conv -->\nstale 96.2\n<!-- /table:conv -->\nbelow\n")
    return reports


def test_table_regenerates_from_its_json_and_follows_a_change(tmp_path):
    reports = make_repo(tmp_path)
    assert report.main(["--reports-dir", str(reports), "--only", "tables"]) == 0
    text = (reports / "README.md").read_text()
    assert text.startswith("# R\n\nabove\n<!-- table:conv -->\n") and text.endswith("<!-- /table:conv -->\nbelow\n")
    assert "stale" not in text
    assert ("| m | 88.2 ± 0.8 | 97.0 ± 0.4 | 80.1 ± 0.7 | validation classes | "
            "`reports/results-kshot/m.json`, `reports/results-by-instance/m.json` |") in text
    assert "| nearest centroid | 98.0 ± 0.3 |  | – | same trials | `reports/results-kshot/m.json` |" in text
    assert "| ProtoNets (published) | 98.8 | 99.7 |  | – | – (published) |" in text
    assert "| seeds | 88.2 (87.1) |  |  | seed 0 (seed 1) | `reports/results-kshot/m.json`, `reports/results-kshot/m1.json` |" in text
    # the JSON is re-measured: the table follows it, and only the changed cell changes
    (reports / "results-kshot" / "m.json").write_text(json.dumps(kshot_json(0.962, ci1=0.005)))
    assert report.main(["--reports-dir", str(reports), "--only", "tables"]) == 0
    after = (reports / "README.md").read_text()
    assert "| m | 96.2 ± 0.5 | 97.0 ± 0.4 | 80.1 ± 0.7 |" in after and "88.2" not in after
    assert after.replace("96.2 ± 0.5", "88.2 ± 0.8").replace("96.2 (87.1)", "88.2 (87.1)") == text
    # the default run (no --only) finds the spec and regenerates it too
    assert report.main(["--reports-dir", str(reports)]) == 0
    assert (reports / "README.md").read_text() == after


@pytest.mark.parametrize("cell, words", [
    ({"json": "reports/results-kshot/m.json", "ways": 20, "shots": 1}, "holds no ways=20, shots=1"),
    ({"json": "reports/results-kshot/m.json", "baseline": "logistic-regression-features", "ways": 5, "shots": 1},
     "holds no baseline=logistic-regression-features"),
    ({"json": "reports/results-by-instance/m.json", "instance": 10}, "holds no instance=10"),
])
def test_a_reference_the_json_does_not_hold_is_one_line(tmp_path, capsys, cell, words):
    reports = make_repo(tmp_path)
    spec = json.loads((reports / "tables.json").read_text())
    spec["tables"][0]["rows"][0]["cells"][0] = cell
    (reports / "tables.json").write_text(json.dumps(spec))
    before = (reports / "README.md").read_text()
    assert report.main(["--reports-dir", str(reports), "--only", "tables"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "'conv'" in err[0], err
    assert (reports / "README.md").read_text() == before  # nothing half-written


def test_a_table_without_its_block_is_one_line(tmp_path, capsys):
    reports = make_repo(tmp_path)
    (reports / "README.md").write_text("# R\n")
    assert report.main(["--reports-dir", str(reports), "--only", "tables"]) != 0
    assert "no block <!-- table:conv -->" in capsys.readouterr().err


def test_the_committed_tables_are_what_their_json_files_say():
    """Every table of reports/tables.json, as committed in README.md, reports/ and docs/, is exactly what
    its JSON files give: a number edited by hand, or a JSON re-measured without `report --only tables`, fails."""
    from pathlib import Path

    from fewshot_mann.reporting.inputs import read_text
    from fewshot_mann.reporting.json_tables import BLOCK, SPEC_FILE, read_spec, render_table

    root = Path(__file__).resolve().parents[2]
    if not (root / "reports" / SPEC_FILE).exists():
        pytest.skip("no reports/tables.json in this tree")
    tables = read_spec(root / "reports" / SPEC_FILE)
    assert tables
    for table in tables:
        blocks = {m.group("name"): m.group("body") for m in BLOCK.finditer(read_text(root / table["file"]))}
        assert blocks.get(table["name"]) == render_table(table, root), f"{table['file']}: table {table['name']} is stale"
