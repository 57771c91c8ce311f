"""``fewshot-mann report`` on tiny synthetic inputs in a temporary reports folder: the
tables are built from the given JSON, the text around them is kept, the plots are written,
and a report without inputs is skipped (or, asked for by name, is one clear line)."""
from __future__ import annotations

import json

from fewshot_mann.cli import report
from fewshot_mann.reporting.memory_comparison import read_rows
from fewshot_mann.reporting.paper import TABLE1, TABLE2
from fewshot_mann.reporting.results import END, START, results_table


def result(ways=5, labels="onehot", acc=(0.2, 0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.87, 0.88, 0.9), **extra):
    return {"accuracy_by_instance": list(acc), "ci95": [0.01] * len(acc), "episodes": 40, "ways": ways,
            "labels": labels, "seed": 0, "date": "2026-01-02", "command": ["evaluate.py", "--episodes", "40"],
            "training": {"episodes": 1234, "train_seconds": 30.0}, **extra}


def make_reports(tmp_path):
    reports = tmp_path / "reports"
    (reports / "results").mkdir(parents=True)
    (reports / "results" / "tiny.json").write_text(json.dumps(result()))
    (reports / "results" / "tiny-string.json").write_text(json.dumps(result(labels="string", decode="seen")))
    (reports / "results" / "notes.json").write_text(json.dumps({"no": "accuracy"}))  # not a result: ignored
    (reports / "results-kshot").mkdir()
    (reports / "results-kshot" / "tiny.json").write_text(json.dumps({
        "results": [{"ways": 5, "shots": 1, "accuracy": 0.5, "ci95": 0.02, "episodes": 40}],
        "command": ["fewshot-mann", "kshot"], "date": "2026-01-03"}))
    run = reports / "runs" / "tiny-run"
    run.mkdir(parents=True)
    run.joinpath("metrics.jsonl").write_text("\n".join(json.dumps(
        {"kind": "eval", "episodes": e, "accuracy_by_instance": [0.2, 0.3 + e / 1000]}) for e in (100, 200)) + "\n")
    (reports / "README.md").write_text(f"# Mine\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    return reports


def test_results_tables_and_plots_from_the_given_json(tmp_path, capsys):
    reports = make_reports(tmp_path)
    assert report.main(["--reports-dir", str(reports), "--only", "results"]) == 0
    body = (reports / "README.md").read_text()
    assert body.startswith("# Mine\n\nbefore\n" + START + "\n") and body.endswith(END + "\nafter\n")
    assert "old table" not in body
    row = next(line for line in body.splitlines() if line.startswith("| **tiny** |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:7] == ["20.0 ± 1.0", "50.0 ± 1.0", "60.0 ± 1.0", "70.0 ± 1.0", "80.0 ± 1.0", "90.0 ± 1.0"]
    assert cells[7:9] == ["1,234", "30 s"] and cells[9].startswith("`evaluate.py --episodes 40` (40 episodes")
    for name in TABLE1:  # the paper's Table 1 heads the 5-way one-hot table
        assert f"| paper: {name} |" in body
    assert "| **tiny-string (answers restricted to the labels shown so far)** |" in body
    assert "| **tiny** | 5-way 1-shot | 50.0 ± 2.0 | 40 | `fewshot-mann kshot` (2026-01-03) |" in body
    assert "notes" not in body
    for png in ("accuracy_by_instance_5way_onehot.png", "accuracy_by_instance_5way_string.png",
                "learning_curves.png"):
        assert (reports / png).stat().st_size > 1000
    assert f"wrote {reports / 'learning_curves.png'}" in capsys.readouterr().out


def test_string_table_has_the_papers_table_2_rows():
    table = results_table([("x", result(ways=15, labels="string"))], (15, "string"))
    lines = table.splitlines()
    assert lines[0].startswith("| model | 1st | 2nd | 3rd | 4th | 5th | 10th |")
    assert [line.split("|")[1].strip() for line in lines[2:-1]] == [f"paper: {n}" for n in TABLE2[(15, "string")]]
    assert lines[-1].startswith("| **x** |")


def test_memory_comparison_from_a_rows_file(tmp_path):
    reports = make_reports(tmp_path)
    (reports / "memory_comparison.json").write_text(json.dumps({"rows": [
        {"name": "tiny MANN", "eval": "results/tiny.json", "metrics": "runs/tiny-run/metrics.jsonl"}]}))
    evals, metrics = read_rows(reports / "memory_comparison.json")
    assert evals == {"tiny MANN": reports / "results/tiny.json"}  # relative to the rows file
    assert report.main(["--reports-dir", str(reports), "--only", "memory-comparison"]) == 0
    md = (reports / "memory_comparison.md").read_text()
    assert "| **tiny MANN** | 20.0 ± 1.0 | 50.0 ± 1.0 | 60.0 ± 1.0 | 80.0 ± 1.0 | 90.0 ± 1.0 |" in md
    assert (reports / "memory_comparison_learning_curves.png").stat().st_size > 1000


def test_every_report_by_default_skips_those_without_inputs(tmp_path, capsys):
    reports = make_reports(tmp_path)
    assert report.main(["--reports-dir", str(reports)]) == 0
    err = capsys.readouterr().err
    assert "memory-comparison: skipped" in err and "second-instance: skipped" in err
    assert (reports / "accuracy_by_instance_5way_onehot.png").exists()
    assert not (reports / "memory_comparison.md").exists()


def test_user_errors_are_one_line(tmp_path, capsys):
    assert report.main(["--reports-dir", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert report.main(["--reports-dir", str(tmp_path), "--only", "second-instance"]) == 2
    assert capsys.readouterr().err.startswith("error: second-instance needs --checkpoints")
    assert report.main(["--reports-dir", str(tmp_path), "--only", "results"]) == 2
    assert "no folder" in capsys.readouterr().err
