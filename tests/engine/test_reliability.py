"""Reliability: runs survive kills (SIGKILL, SIGTERM, a crash inside a save) and resume to the
bit the run that was never interrupted; nothing is half-written; non-finite steps stop cleanly.

The kill tests run the real ``train.py`` in a subprocess on a fake Omniglot (a few characters
in the official layout) with a class split given as a JSON file.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train as train_script
from helpers import as_split, synthetic_bank, tiny_config
from fewshot_mann.engine import checkpoint
from fewshot_mann import fileio
from fewshot_mann.engine import trainer as training
from fewshot_mann.engine.checkpoint import load_checkpoint
from fewshot_mann.config import Config
from fewshot_mann.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fewshot_mann"
EPISODES = 800


def train_args(data, out, episodes=EPISODES):
    root, split = data
    return ["--data-root", str(root), "--split", str(split), "--image-size", "8", "--ways", "3", "--instances", "4",
            "--controller-size", "16", "--memory-slots", "10", "--memory-width", "5", "--read-heads", "2",
            "--episodes", str(episodes), "--batch-size", "2", "--checkpoint-every", "14", "--eval-every", "20",
            "--eval-episodes", "6", "--threads", "1", "--out", str(out), "--no-progress"]


def start_training(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_run(fake_data, tmp_path_factory):
    """The same run, never interrupted (in-process: same code, same thread count)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert train_script.main(train_args(fake_data, out)) == 0
    return out


def metrics_without_times(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    for row in rows:
        row.pop("train_seconds", None)
    return rows


def assert_same_run(a: Path, b: Path):
    """Weights, optimiser state, loop state and metrics log identical (bit for bit)."""
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["episodes_done"] == cb["episodes_done"] == EPISODES
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for field in sa[k]:
            assert torch.equal(sa[k][field], sb[k][field]), (k, field)
    skip = {"train_seconds", "metrics_bytes"}  # wall time, and the log's length that depends on it
    assert {k: v for k, v in ca["state"].items() if k not in skip} == \
        {k: v for k, v in cb["state"].items() if k not in skip}
    assert metrics_without_times(a / "metrics.jsonl") == metrics_without_times(b / "metrics.jsonl")
    assert not list(b.glob(".*.tmp")), "a temporary file was left behind"


# ------------------------------------------------------------------ 1. kills, signals, crashes


@pytest.mark.parametrize("moment", ["before-first-checkpoint", "mid-run"])
def test_sigkill_then_resume_equals_uninterrupted_run(fake_data, reference_run, tmp_path, moment):
    out = tmp_path / "run"
    proc = start_training(train_args(fake_data, out))
    if moment == "before-first-checkpoint":
        wait_for(out / "config.json", proc)
    else:
        wait_for(out / "checkpoint.pt", proc)
        time.sleep(random.Random(7).uniform(0.0, 1.0))  # somewhere in the ~3 s of training left
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert train_script.main(train_args(fake_data, out) + ["--resume"]) == 0
    assert_same_run(reference_run, out)


def test_sigterm_saves_a_checkpoint_and_resume_equals_uninterrupted_run(fake_data, reference_run, tmp_path):
    out = tmp_path / "run"
    proc = start_training(train_args(fake_data, out))
    wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint saved at" in err and "--resume" in err
    saved = load_checkpoint(out / "checkpoint.pt")
    assert 0 < saved["episodes_done"] < EPISODES
    # the checkpoint is of the very step the signal stopped, not only the last periodic one
    assert f"saved at {saved['episodes_done']:,} episodes" in err
    assert train_script.main(train_args(fake_data, out) + ["--resume"]) == 0
    assert_same_run(reference_run, out)


KILL_INSIDE_SAVE = """
import os, signal, sys
import torch
from fewshot_mann.engine import checkpoint
real_save, saves = torch.save, []
def dying_save(obj, f):
    saves.append(1)
    if len(saves) == 3:  # the third checkpoint: write half of it, then die mid-write
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f)
checkpoint.torch.save = dying_save
from fewshot_mann.cli.train import main as train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_kill_inside_a_save_keeps_the_previous_checkpoint(fake_data, reference_run, tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", KILL_INSIDE_SAVE, *train_args(fake_data, out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert list(out.glob(".checkpoint.pt.*.tmp")), "the half-written save should be a temporary file"
    previous = load_checkpoint(out / "checkpoint.pt")  # whole and loadable: the second save
    assert previous["episodes_done"] == 2 * 14
    assert train_script.main(train_args(fake_data, out) + ["--resume"]) == 0
    assert_same_run(reference_run, out)


@pytest.fixture
def synthetic(monkeypatch):
    banks = (synthetic_bank(classes=10, per_class=12, seed=1), synthetic_bank(classes=6, per_class=12, seed=2))
    monkeypatch.setattr(training, "load_split_banks", as_split(lambda cfg, progress=True: banks))
    return banks


def small_cfg(episodes=32) -> Config:
    cfg = tiny_config()
    cfg.episodes.ways, cfg.episodes.instances = 3, 4
    cfg.train.episodes, cfg.train.batch_size = episodes, 4
    cfg.train.eval_every, cfg.train.eval_episodes, cfg.train.checkpoint_every = 16, 8, 8
    cfg.data.rotations = False
    return cfg


def run(cfg, out, **kw):
    return training.train(cfg, out, progress=False, log=lambda m: None, **kw)


def test_exception_inside_a_save_keeps_the_previous_checkpoint(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def failing_save(obj, f):
        saves.append(1)
        if len(saves) == 2:
            real_save(obj, f)
            f.truncate(f.tell() // 3)
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        run(small_cfg(), out)
    assert not list(out.glob(".*.tmp"))
    assert load_checkpoint(out / "checkpoint.pt")["episodes_done"] == 8


def test_atomic_write_leaves_old_file_or_new_file(tmp_path):
    path = tmp_path / "report.json"
    fileio.atomic_write_json(path, {"v": 1})

    def half_then_crash(f):
        f.write(b'{"v": 2, "half')
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        fileio.atomic_write(path, half_then_crash)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    fileio.atomic_write_json(path, {"v": 3})
    assert json.loads(path.read_text()) == {"v": 3}
    # the mode a plain open() would give (not mkstemp's 0600), and an existing file keeps its own
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    fileio.atomic_write_json(path, {"v": 4})
    assert path.stat().st_mode & 0o777 == 0o640


WRITERS = re.compile(r"\.write_text\(|\.write_bytes\(|open\([^)]*['\"][wax]b?\+?['\"]"
                     r"|torch\.save\(|np\.savez?\(|np\.savez_compressed\(|\.savefig\(")
# ``f`` / ``buf`` passed as an argument: the file of ``fileio.atomic_write``'s callback, or memory.
INTO_ATOMIC_FILE = re.compile(r"[(,]\s*(?:f|buf)\s*[,)]")


def test_package_writes_files_only_through_fileio():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "fileio.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if WRITERS.search(code) and not INTO_ATOMIC_FILE.search(code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "files must be written with fileio.atomic_write*:\n" + "\n".join(offenders)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_clean(synthetic, tmp_path):
    out = tmp_path / "run"
    run(small_cfg(), tmp_path / "straight")
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"kind": "train", "episodes": 999}\n{"kind": "tr')  # the dead run's log
    run(small_cfg(), out, resume=True)
    assert metrics_without_times(out / "metrics.jsonl") == metrics_without_times(tmp_path / "straight/metrics.jsonl")


class Crash(Exception):
    """Stands in for the process dying."""


@pytest.mark.parametrize("partial", [False, True])
def test_log_lines_written_after_the_checkpoint_are_dropped_on_resume(synthetic, tmp_path, monkeypatch, partial):
    out = tmp_path / "run"
    real_append, lines = training.append_line, []

    def dying_append(path, line):  # die after the log has moved past the last checkpoint
        lines.append(line)
        if len(lines) == 3:  # the 3rd eval line (episodes 12): the checkpoint is of 8
            if partial:
                with open(path, "a") as f:
                    f.write(line[: len(line) // 2])
            else:
                real_append(path, line)
            raise Crash
        real_append(path, line)

    cfg = small_cfg()
    cfg.train.eval_every = 4
    with monkeypatch.context() as m:
        m.setattr(training, "append_line", dying_append)
        with pytest.raises(Crash):
            run(cfg, out)
    assert load_checkpoint(out / "checkpoint.pt")["episodes_done"] == 8
    cfg = small_cfg()
    cfg.train.eval_every = 4
    run(cfg, tmp_path / "straight4")
    run(cfg, out, resume=True)
    assert metrics_without_times(out / "metrics.jsonl") == metrics_without_times(tmp_path / "straight4/metrics.jsonl")


# ------------------------------------------------------------------ 4. numerical faults


def test_non_finite_gradient_stops_keeps_checkpoint_or_is_skipped(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(small_cfg(16), out)
    before = load_checkpoint(out / "checkpoint.pt")
    real_new_model = training.new_model

    def poisoned(cfg):  # a finite loss whose gradient is infinite
        model = real_new_model(cfg)
        next(model.parameters()).register_hook(lambda g: g * float("inf"))
        return model

    monkeypatch.setattr(training, "new_model", poisoned)
    messages = []
    with pytest.raises(UserError, match=r"non-finite loss or gradient at step 4 .*last good checkpoint is kept"):
        training.train(small_cfg(32), out, resume=True, progress=False, log=messages.append)
    after = load_checkpoint(out / "checkpoint.pt")
    assert after["episodes_done"] == 16
    for k in before["model"]:
        assert torch.equal(before["model"][k], after["model"][k])
    cfg = small_cfg(32)
    cfg.train.skip_nonfinite = True
    summary = training.train(cfg, out, resume=True, progress=False, log=messages.append)
    assert summary["episodes_done"] == 32
    skipped = load_checkpoint(out / "checkpoint.pt")
    assert skipped["state"]["nonfinite_skipped"] == 4
    assert sum("skipped a batch with a non-finite" in m for m in messages) == 4
    for k in before["model"]:  # every batch was skipped: no update reached the weights
        assert torch.equal(before["model"][k], skipped["model"][k])


def test_gradient_clipping_is_on_by_default_and_applied(synthetic, tmp_path, monkeypatch):
    assert Config().train.grad_clip == 10.0
    norms = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    real_loss = training.loss_fn
    monkeypatch.setattr(training, "loss_fn", lambda *a: real_loss(*a) * 1e4)  # gradients far above 10
    run(small_cfg(16), tmp_path / "clipped")
    assert len(norms) == 4 and max(norms) <= 10.0 * (1 + 1e-5)
    norms.clear()
    cfg = small_cfg(16)
    cfg.train.grad_clip = 0
    run(cfg, tmp_path / "unclipped")
    assert min(norms) > 100
