"""torch.distributed: two Gloo processes on CPU train, resume and evaluate like one process.

The global batch of step s is ``batch_rng(seed, s)`` on every rank and each rank trains on its
shard; the ranks' loss shares add up to the one-process loss, so after the gradient sum the
weights match one process to float tolerance. Evaluation episodes are sharded and gathered in
order, so the numbers are the one-process numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from fewshot_mann.engine.checkpoint import load_checkpoint
from fewshot_mann.engine.distributed import shard

ROOT = Path(__file__).resolve().parents[2]


def test_shards_cover_every_item_once_in_order_and_rank_0_is_never_empty():
    for world in range(1, 6):
        for n in range(world, 30):
            parts = [shard(n, rank, world) for rank in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert all(stop > start for start, stop in parts)
            assert max(s - a for a, s in parts) - min(s - a for a, s in parts) <= 1


def tiny(data, out, *extra):
    root, split = data
    return ["--data-root", str(root), "--split", str(split), "--image-size", "8", "--ways", "3", "--instances", "4",
            "--controller-size", "16", "--memory-slots", "10", "--memory-width", "5", "--read-heads", "2",
            "--eval-episodes", "7", "--threads", "1", "--no-progress", "--out", str(out), *extra]


def rows(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def assert_same_training(one: Path, two: Path):
    a, b = load_checkpoint(one / "checkpoint.pt"), load_checkpoint(two / "checkpoint.pt")
    assert a["episodes_done"] == b["episodes_done"]
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for k, state in a["optimizer"]["state"].items():
        for field in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b["optimizer"]["state"][k][field], state[field], rtol=1e-3, atol=1e-7)
    # rank 0 alone writes the log: the same lines, once each, with the same numbers
    for kind in ("train", "eval"):
        ra, rb = rows(one / "metrics.jsonl", kind), rows(two / "metrics.jsonl", kind)
        assert [r["episodes"] for r in ra] == [r["episodes"] for r in rb] and ra
        for x, y in zip(ra, rb):
            np.testing.assert_allclose(y["accuracy_by_instance"], x["accuracy_by_instance"], atol=1e-9)
            if kind == "train":
                assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    assert not list(two.glob(".*.tmp"))


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this PyTorch build has no torch.distributed with the Gloo backend")
def test_two_gloo_processes_train_resume_and_evaluate_like_one(fake_data, tmp_path):
    plain = ["--batch-size", "4", "--checkpoint-every", "8", "--eval-every", "8"]
    # batch 5 over 2 ranks: shares of 3 and 2 episodes; jitter drawn for the whole batch
    jitter = ["--batch-size", "5", "--episodes", "30", "--checkpoint-every", "10", "--eval-every", "15",
              "--jitter-shift", "1", "--jitter-rotate", "10"]
    commands = [
        ["train", *tiny(fake_data, tmp_path / "plain2", *plain, "--episodes", "24")],
        ["train", *tiny(fake_data, tmp_path / "plain2", *plain, "--episodes", "40", "--resume")],
        ["train", *tiny(fake_data, tmp_path / "jitter2", *jitter)],
        ["evaluate", "--checkpoint", str(tmp_path / "plain2/checkpoint.pt"), "--episodes", "9", "--batch-size", "4",
         "--threads", "1", "--json", str(tmp_path / "eval2.json"), "--no-progress"],
    ]
    argv = [a for c in commands for a in (*c, "++")][:-1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "tests/helpers/distributed_worker.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained ") == 3, res.stdout  # rank 0 alone reports
    assert "x 2 processes" in res.stderr and "resuming" in res.stderr

    # the same work in one process
    assert train_script.main(tiny(fake_data, tmp_path / "plain1", *plain, "--episodes", "24")) == 0
    assert train_script.main(tiny(fake_data, tmp_path / "plain1", *plain, "--episodes", "40", "--resume")) == 0
    assert train_script.main(tiny(fake_data, tmp_path / "jitter1", *jitter)) == 0
    assert evaluate_script.main(["--checkpoint", str(tmp_path / "plain2/checkpoint.pt"), "--episodes", "9",
                                 "--json", str(tmp_path / "eval1.json"), "--no-progress"]) == 0

    assert_same_training(tmp_path / "plain1", tmp_path / "plain2")
    assert_same_training(tmp_path / "jitter1", tmp_path / "jitter2")
    e1, e2 = (json.loads((tmp_path / f"eval{n}.json").read_text()) for n in (1, 2))
    assert e2["episodes"] == e1["episodes"] == 9
    assert e2["accuracy_by_instance"] == e1["accuracy_by_instance"] and e2["ci95"] == e1["ci95"]
