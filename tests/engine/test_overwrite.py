"""Issue 31, cause 7: a run started over (``--overwrite``) leaves none of the old run's results
beside the new checkpoint; ``--resume`` keeps them (the same run goes on)."""
from __future__ import annotations

import json

import pytest

from fewshot_mann.cli import main as cli
from fewshot_mann.engine.run_dir import RESULT_FILES, RUN_FILES
from helpers import SYNTHETIC_BANKS, patch_banks

BANKS = SYNTHETIC_BANKS
TINY = ["--episodes", "4", "--image-size", "6", "--controller-size", "16", "--memory-slots", "10", "--memory-width", "5",
        "--read-heads", "3", "--ways", "3", "--instances", "4", "--no-rotations", "--batch-size", "2",
        "--eval-every", "0", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    patch_banks(monkeypatch, BANKS)


def test_overwrite_removes_the_old_runs_results(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--final-eval", "4", "--out", str(out)]) == 0
    assert (out / "final_eval.json").exists()
    (out / "split.json").write_text(json.dumps({"dataset": "folder"}))  # what a folder run writes
    assert cli.main(["train", *TINY, "--final-eval", "0", "--out", str(out), "--overwrite"]) == 0
    assert (out / "checkpoint.pt").exists()
    assert not any((out / name).exists() for name in RESULT_FILES)


def test_resume_keeps_the_runs_results(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--final-eval", "4", "--out", str(out)]) == 0
    before = (out / "final_eval.json").read_text()
    assert cli.main(["train", *TINY, "--final-eval", "0", "--out", str(out), "--resume"]) == 0
    assert (out / "final_eval.json").read_text() == before
    assert set(RESULT_FILES).isdisjoint(RUN_FILES)
