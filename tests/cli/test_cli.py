"""The real entry points: a train -> evaluate round trip, and bad input as one clear line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from fewshot_mann.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--controller-size", "16", "--memory-slots", "12", "--memory-width", "6", "--read-heads", "2",
        "--image-size", "20", "--batch-size", "4", "--eval-episodes", "8", "--no-progress"]


def test_train_then_evaluate_round_trip(omniglot_args, tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_script.main([*omniglot_args, "--episodes", "8", "--eval-every", "8",
                            "--out", str(out), *TINY])
    assert rc == 0
    assert (out / "checkpoint.pt").exists() and (out / "config.json").exists()
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert len(evals) == 1 and len(evals[0]["accuracy_by_instance"]) == 10
    rc = evaluate_script.main(["--checkpoint", str(out / "checkpoint.pt"), *omniglot_args,
                               "--episodes", "20", "--json", str(tmp_path / "e.json"),
                               "--plot", str(tmp_path / "e.png"), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert len(res["accuracy_by_instance"]) == 10 and len(res["ci95"]) == 10
    assert res["episodes"] == 20 and res["ways"] == 5 and res["seed"] == 0
    assert res["config"]["model"]["controller_size"] == 16 and res["command"][0] == "evaluate.py"
    assert all(0 <= a <= 1 for a in res["accuracy_by_instance"])
    assert (tmp_path / "e.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "logistic-regression-raw-pixels" in printed
    # the plain-pixel baselines on Omniglot too, on exactly evaluate's episodes (seed 0), not another draw's
    from fewshot_mann.engine.baselines import BASELINES, by_instance_baselines
    from fewshot_mann.engine.checkpoint import load_checkpoint
    from fewshot_mann.engine.loading import load_split_banks
    cfg = load_checkpoint(out / "checkpoint.pt")["config_obj"]
    if omniglot_args:
        cfg.data.data_root = omniglot_args[1]
    pixels = load_split_banks(cfg, progress=False).test
    pixel_rows = tuple(b for b in BASELINES if b.inputs == "pixels")
    assert [b["name"] for b in res["baselines"]] == [b.name for b in pixel_rows]
    same, _ = by_instance_baselines({"pixels": pixels}, pixel_rows, cfg.episodes, episodes=20, seed=0, batch_size=8)
    other, _ = by_instance_baselines({"pixels": pixels}, pixel_rows, cfg.episodes, episodes=20, seed=1, batch_size=8)
    for got, want, other_draw in zip(res["baselines"], same, other):
        assert got["episodes"] == 20 and len(got["accuracy_by_instance"]) == 10
        assert got["accuracy_by_instance"] == pytest.approx(want["accuracy_by_instance"], abs=1e-12)
        assert got["accuracy_by_instance"] != pytest.approx(other_draw["accuracy_by_instance"], abs=1e-12)
    # resume extends the same run
    rc = train_script.main([*omniglot_args, "--episodes", "16", "--eval-every", "8",
                            "--out", str(out), "--resume", *TINY])
    assert rc == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["episodes_done"] == 16


def test_config_file_values_become_defaults(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"ways": 3, "model": {"memory_slots": 64}}))
    args = train_cli.parse_train_args(["-c", str(cfg_file), "--ways", "4"])
    cfg = train_cli.config_from_args(args)
    assert cfg.episodes.ways == 4 and cfg.model.memory_slots == 64  # flags still override


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("argv,needle", [
    (["--ways", "0"], "--ways must be at least 1"),
    (["--episodes", "-5"], "--episodes must be >= 0"),
    (["--memory-slots", "2", "--read-heads", "4"], "cannot exceed --memory-slots"),
    (["--split", "nope"], "unknown split 'nope'"),
    (["--data-root", "/nonexistent/omniglot"], "--download"),
])
def test_train_bad_input_is_one_clear_line(argv, needle, tmp_path, capsys):
    rc = train_script.main([*argv, "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2
    assert needle in _error_line(capsys)


def test_ways_and_instances_beyond_data(omniglot_args, tmp_path, capsys):
    rc = train_script.main([*omniglot_args, "--instances", "21", "--out", str(tmp_path / "r"),
                            "--no-progress", *TINY[:8]])
    assert rc == 2 and "--instances 21" in _error_line(capsys)
    rc = train_script.main([*omniglot_args, "--ways", "500", "--out", str(tmp_path / "r2"),
                            "--no-progress", *TINY[:8]])
    assert rc == 2 and "--ways 500" in _error_line(capsys)


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"garbage" * 100, "not a valid fewshot-mann checkpoint"),
    ("foreign", "not a fewshot-mann checkpoint"),
])
def test_evaluate_bad_checkpoint(content, needle, tmp_path, capsys):
    path = tmp_path / "c.pt"
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif content is not None:
        path.write_bytes(content)
    rc = evaluate_script.main(["--checkpoint", str(path)])
    assert rc == 2 and needle in _error_line(capsys)


def test_console_entry_points_run_as_scripts():
    for args in (["train.py", "--help"], ["evaluate.py", "--help"], ["-m", "fewshot_mann", "--help"]):
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "usage" in res.stdout.lower()


def test_evaluate_other_ways_string_labels_only(omniglot_args, tmp_path, capsys):
    """A string-label checkpoint answers any number of ways; a one-hot one only its own."""
    runs = {}
    for labels in ("string", "onehot"):
        runs[labels] = tmp_path / labels
        rc = train_script.main([*omniglot_args, "--episodes", "4", "--eval-every", "0",
                                "--labels", labels, "--ways", "3", "--instances", "4",
                                "--out", str(runs[labels]), *TINY])
        assert rc == 0
    rc = evaluate_script.main(["--checkpoint", str(runs["string"] / "checkpoint.pt"), "--ways", "7",
                               "--episodes", "6", "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["ways"] == 7 and res["config"]["episodes"]["ways"] == 7 and len(res["accuracy_by_instance"]) == 4
    capsys.readouterr()
    rc = evaluate_script.main(["--checkpoint", str(runs["onehot"] / "checkpoint.pt"), "--ways", "2",
                               "--no-progress"])
    assert rc == 2 and "3-way one-hot" in _error_line(capsys)
