"""Issue 31, cause 6: ``report`` reads its inputs as every other command does (regular files
only, bounded, JSON depth and types checked), counts an evaluation's parameters without
building its model, and checks where it writes before any work."""
from __future__ import annotations

from helpers import one_error_line

import json
import os
import signal
import time

import pytest

from fewshot_mann.cli import report
from fewshot_mann.reporting import memory_comparison


def result(**extra):
    acc = [0.2, 0.5, 0.6, 0.7, 0.8]
    return {"accuracy_by_instance": acc, "ci95": [0.01] * len(acc), "episodes": 40, "ways": 5, "labels": "onehot",
            "seed": 0, "date": "2026-01-02", "command": ["evaluate.py"], **extra}


@pytest.fixture(autouse=True)
def never_hang():
    """A read that blocks (a FIFO) fails the test instead of hanging it."""
    def stop(*_):
        raise TimeoutError("report blocked")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run(tmp_path, evaluation, *extra) -> int:
    reports = tmp_path / "reports"
    reports.mkdir(exist_ok=True)
    return report.main(["--reports-dir", str(reports), "--only", "memory-comparison", "--eval", f"row={evaluation}",
                        "--out-dir", str(tmp_path / "out"), *extra])


def write(tmp_path, text: str):
    path = tmp_path / "eval.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_an_evaluation_that_is_not_a_regular_file_is_one_line_and_never_read(kind, tmp_path, capsys):
    path = {"dev-zero": "/dev/zero", "folder": str(tmp_path)}.get(kind)
    if kind == "fifo":
        path = str(tmp_path / "fifo.json")
        os.mkfifo(path)
    assert run(tmp_path, path) == 2
    assert "not a regular file" in one_error_line(capsys)


BAD_JSON = {
    "nested": "[" * 100_000 + "]" * 100_000,
    "null": "null",
    "list": "[1, 2]",
    "accuracy-text": json.dumps(result(accuracy_by_instance="high")),
    "accuracy-nested": json.dumps(result(accuracy_by_instance=[[0.5]] * 5)),
    "ci-short": json.dumps(result(ci95=[0.1])),
    "episodes-text": json.dumps(result(episodes="40")),
    "ways-float": json.dumps(result(ways=5.5)),
    "training-list": json.dumps(result(training=[1, 2])),
    "training-seconds-text": json.dumps(result(training={"episodes": 10, "train_seconds": "fast"})),
    "command-number": json.dumps(result(command=5)),
    "config-list": json.dumps(result(config=[1])),
    "config-wrong-type": json.dumps(result(config={"model": {"controller_size": "big"}})),
    "config-huge-number": json.dumps(result(config={"model": {"controller_size": 10**19}})),
    "config-huge-model": json.dumps(result(config={"model": {"controller_size": 16384, "memory_width": 16384,
                                                             "num_read_heads": 64}})),
}


@pytest.mark.parametrize("name", list(BAD_JSON))
def test_a_malformed_evaluation_json_is_one_line_or_a_report(name, tmp_path, capsys):
    code = run(tmp_path, write(tmp_path, BAD_JSON[name]))
    if code == 0:  # only where every value the report uses has its type
        assert name == "config-huge-model"
        assert "87,007,117,381" in (tmp_path / "out" / "memory_comparison.md").read_text()  # counted, never built
    else:
        assert code == 2 and "eval.json" in one_error_line(capsys)


def test_the_parameters_of_an_evaluation_config_are_counted_without_building_it():
    """348 GB of float32 weights if built: counted on the meta device in milliseconds."""
    cfg = {"model": {"controller_size": 16384, "memory_width": 16384, "num_read_heads": 64}}
    t0 = time.perf_counter()
    assert memory_comparison.parameter_count(result(config=cfg)) == 87_007_117_381
    assert time.perf_counter() - t0 < 5


def test_a_metrics_log_that_is_a_fifo_is_skipped_with_a_warning(tmp_path, capsys):
    fifo = tmp_path / "metrics.jsonl"
    os.mkfifo(fifo)
    assert run(tmp_path, write(tmp_path, json.dumps(result())), "--metrics", f"row={fifo}") == 0
    assert "metrics log" in capsys.readouterr().err


def test_out_dir_onto_a_file_fails_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "out").write_text("mine")
    monkeypatch.setattr(memory_comparison, "collect", lambda *a: pytest.fail("the work started"))
    assert run(tmp_path, write(tmp_path, json.dumps(result()))) == 2
    assert "--out-dir" in one_error_line(capsys)
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize("flag", ["--out-dir", "--reports-dir"])
def test_an_empty_folder_path_is_one_line_and_never_the_current_folder(flag, tmp_path, capsys, monkeypatch):
    (tmp_path / "memory_comparison.md").write_text("mine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(memory_comparison, "collect", lambda *a: pytest.fail("the work started"))
    assert report.main(["--reports-dir", str(tmp_path), "--eval", f"row={write(tmp_path, json.dumps(result()))}",
                        "--only", "memory-comparison", flag, ""]) == 2
    assert "an empty path" in one_error_line(capsys)
    assert (tmp_path / "memory_comparison.md").read_text() == "mine"


def test_report_threads_zero_is_the_torch_default(tmp_path):
    assert run(tmp_path, write(tmp_path, json.dumps(result())), "--threads", "0") == 0


def test_the_results_report_reads_the_committed_evaluation_files(tmp_path):
    """Files written before 2026-12-01 store the number of classes in "classes" (423), newer ones the
    part scored ("test"): both are read; a list is still refused. The committed reports/results/ holds both."""
    from fewshot_mann.reporting.inputs import evaluation
    from fewshot_mann.errors import UserError

    assert evaluation(result(classes=423), "old.json")["classes"] == 423
    assert evaluation(result(classes="test"), "new.json")["classes"] == "test"
    with pytest.raises(UserError, match="classes must be a string"):
        evaluation(result(classes=[1, 2]), "bad.json")
    from pathlib import Path
    from fewshot_mann.reporting.results import load_results
    committed = Path(__file__).resolve().parents[2] / "reports" / "results"
    if committed.is_dir():
        loaded = dict(load_results(committed))
        assert {type(r.get("classes")) for r in loaded.values()} >= {int, str}, "expected both formats in reports/results"
