"""``fewshot-mann report --only memory-comparison`` on the outputs of real tiny runs (train.py,
evaluate.py --json, knn --json): the table shows their numbers, the plots are written."""
from __future__ import annotations

import json
from pathlib import Path

from fewshot_mann.cli import main as cli
from fewshot_mann.cli import report
from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from fewshot_mann.models.registry import count_parameters
from fewshot_mann.reporting.memory_comparison import training_summary
from helpers.lineage import train_and_evaluate, use_synthetic_banks


def compare(*argv) -> int:
    return report.main(["--only", "memory-comparison", *argv])


def test_comparison_from_real_tiny_runs(tmp_path, monkeypatch, capsys):
    use_synthetic_banks(monkeypatch)
    results = tmp_path / "results"
    results.mkdir()
    for name in ("mann", "dnc"):
        train_and_evaluate(name, tmp_path, episodes=16, eval_every=8)
        (tmp_path / f"{name}-eval.json").rename(results / f"{name}.json")
    assert cli.main(["knn", "--ways", "3", "--instances", "4", "--image-size", "6", "--episodes", "12",
                     "--batch-size", "5", "--json", str(tmp_path / "knn.json"), "--no-progress"]) == 0
    out = tmp_path / "report"
    rows = [f"{name}={results / f'{name}.json'}" for name in ("mann", "dnc")] + [f"knn-raw={tmp_path / 'knn.json'}"]
    rc = compare(*(x for row in rows for x in ("--eval", row)), "--reports-dir", str(tmp_path), "--out-dir", str(out))
    assert rc == 0
    md = (out / "memory_comparison.md").read_text()
    assert "the same 12 evaluation episodes (seed 0), 3-way, 4 instances" in md
    for name in ("mann", "dnc"):
        res = json.loads((results / f"{name}.json").read_text())
        row = next(line for line in md.splitlines() if line.startswith(f"| **{name}** |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        acc, ci = res["accuracy_by_instance"], res["ci95"]
        assert cells[1:4] == [f"{100 * acc[i]:.1f} ± {100 * ci[i]:.1f}" for i in range(3)]
        assert cells[4:6] == ["–", "–"]  # instances 5 and 10 do not exist in a 4-instance episode
        model = load_model_from_checkpoint(load_checkpoint(res["checkpoint"]))
        assert cells[6] == f"{count_parameters(model):,}"
        assert cells[7] == "16"
        metrics = [json.loads(l) for l in (Path(res["checkpoint"]).parent / "metrics.jsonl").read_text().splitlines()]
        last = [m for m in metrics if m["kind"] == "train"][-1]
        assert cells[8].startswith(f"{last['episodes'] / last['train_seconds']:.1f} (")
        assert f"train `train.py --model {name}" in md
    knn_row = next(line for line in md.splitlines() if line.startswith("| **knn-raw** |"))
    assert "| 0 |" in knn_row and "`fewshot-mann knn --ways 3" in md
    for png in ("memory_comparison_by_instance.png", "memory_comparison_learning_curves.png"):
        assert (out / png).stat().st_size > 1000


def test_no_inputs_or_a_bad_file_is_one_clear_line(tmp_path, capsys):
    assert compare("--reports-dir", str(tmp_path)) == 2
    assert capsys.readouterr().err.startswith("error: no evaluation JSON files given")
    (tmp_path / "x.json").write_text("{}")
    assert compare("--reports-dir", str(tmp_path), "--eval", f"x={tmp_path / 'x.json'}") == 2
    assert "is not an evaluation JSON" in capsys.readouterr().err
    (tmp_path / "memory_comparison.json").write_text(json.dumps({"rows": [{"name": "x", "eval": "x.json"}]}))
    assert compare("--reports-dir", str(tmp_path)) == 2  # the same, through the rows file
    assert "is not an evaluation JSON" in capsys.readouterr().err
    assert compare("--reports-dir", str(tmp_path), "--eval", "nameless") == 2
    assert "--eval expects NAME=PATH" in capsys.readouterr().err


def test_a_run_that_went_on_after_its_evaluation_keeps_its_row(tmp_path):
    """Episodes and speed come from the training log up to the evaluated checkpoint."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"kind": "train", "episodes": e, "train_seconds": e / 10})
                                 for e in (100, 200, 300, 400)) + "\n")
    info = training_summary({"training": {"episodes": 250}}, metrics)
    assert info["episodes"] == 200 and info["train_seconds"] == 20.0
    info = training_summary({}, metrics)  # nothing says where it was evaluated: the whole log
    assert info["episodes"] == 400
