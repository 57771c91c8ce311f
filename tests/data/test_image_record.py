"""Issue 31, cause 5: the checkpoint's record of its training images scales with the data: a
run over a million images writes a checkpoint that loads, evaluates, exports, resumes and
still refuses a trained image as held out; old checkpoints (a list of digests) keep working."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fewshot_mann.cli import main as cli
from fewshot_mann.data import image_record
from fewshot_mann.engine import loading
from fewshot_mann.data.bank import SplitBanks
from fewshot_mann.data.heldout import trained_overlap
from fewshot_mann.engine import trainer as training
from fewshot_mann.engine.checkpoint import load_checkpoint
from fewshot_mann.errors import CheckpointError
from helpers import synthetic_bank

MILLION = 1_000_000
TRAIN, HELD = synthetic_bank(classes=10, per_class=12, seed=1), synthetic_bank(classes=6, per_class=12, seed=2)
HELD = type(HELD)(HELD.images, HELD.offsets, HELD.counts, [f"held/{n}" for n in HELD.names])
TINY = ["--episodes", "4", "--image-size", "6", "--controller-size", "16", "--memory-slots", "10", "--memory-width", "5",
        "--read-heads", "3", "--ways", "3", "--instances", "4", "--no-rotations", "--batch-size", "2",
        "--eval-every", "0", "--no-progress", "--threads", "1", "--checkpoint-every", "2"]


def hex_digests(n: int, seed: int) -> list[str]:
    raw = np.random.default_rng(seed).bytes(32 * n).hex()
    return [raw[64 * i:64 * (i + 1)] for i in range(n)]


DIGESTS = hex_digests(MILLION, 0)


@pytest.fixture(autouse=True)
def a_million_training_images(monkeypatch):
    """The training classes hold a million images (by digest); the banks stay tiny."""
    per = MILLION // TRAIN.num_classes
    digests = {n: DIGESTS[i * per:(i + 1) * per] for i, n in enumerate(TRAIN.names)}

    def load_split(cfg, progress=True, recorded=None, *, feature_cache=True, with_pixels=False):
        parts = SplitBanks(TRAIN, HELD, HELD, digests)
        return (parts, parts) if with_pixels else parts
    monkeypatch.setattr(training, "load_split_banks", load_split)
    monkeypatch.setattr(loading, "load_split_banks", load_split)


def test_a_run_over_a_million_images_writes_a_checkpoint_every_command_reads(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--final-eval", "2", "--out", str(out)]) == 0  # its own final evaluation
    assert (out / "final_eval.json").exists()
    t0 = time.perf_counter()
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert time.perf_counter() - t0 < 10
    assert ckpt["train_images"]["count"] == MILLION and "train_digests" not in ckpt
    assert (out / "checkpoint.pt").stat().st_size < 20 * 2**20  # 8 bytes an image
    ckpt_path = str(out / "checkpoint.pt")
    assert cli.main(["evaluate", "--checkpoint", ckpt_path, "--episodes", "2", "--no-progress"]) == 0
    assert cli.main(["export", ckpt_path, str(tmp_path / "small.pt")]) == 0
    assert load_checkpoint(tmp_path / "small.pt")["train_images"]["count"] == MILLION
    assert cli.main(["train", *TINY, "--episodes", "6", "--out", str(out), "--resume", "--final-eval", "0"]) == 0
    assert cli.main(["export", ckpt_path, str(tmp_path / "bare.pt"), "--without-image-record"]) == 0
    assert "train_images" not in load_checkpoint(tmp_path / "bare.pt")


def test_the_record_still_finds_trained_images():
    ckpt = {"classes": {"train": [], "validation": [], "test": []}, "train_images": image_record.compact(DIGESTS)}
    others = hex_digests(1000, 1)
    assert trained_overlap(ckpt, [], DIGESTS[::1000] + others) == ([], 1000)
    assert trained_overlap(ckpt, [], others) == ([], 0)


def test_an_old_checkpoint_with_a_list_of_digests_is_still_checked():
    ckpt = {"classes": {"train": [], "validation": [], "test": []}, "train_digests": DIGESTS[:50]}
    assert trained_overlap(ckpt, [], DIGESTS[40:60]) == ([], 10)


@pytest.mark.parametrize("record", [[1, 2], {"count": 2}, {"count": "2", "sha256": "0" * 64, "prefixes": torch.zeros(2)},
                                    {"count": 3, "sha256": "0" * 64, "prefixes": torch.zeros(2, dtype=torch.int64)},
                                    {"count": 2, "sha256": 5, "prefixes": torch.zeros(2, dtype=torch.int64)}])
def test_a_damaged_image_record_is_refused_as_damaged(record, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--final-eval", "0", "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["train_images"] = record
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged: train_images"):
        load_checkpoint(tmp_path / "bad.pt")
