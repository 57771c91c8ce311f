"""kNN vector-store baseline: perfect on fixed class patterns from the 2nd instance, no
peeking at later steps, equal to a literal loop, the same episodes and JSON keys as
evaluate.py, and checkpoint features through the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import synthetic_bank
from fewshot_mann.cli import main as cli
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.episodes import evaluation_episodes, to_tensors
from fewshot_mann.engine.evaluation import evaluate
from fewshot_mann.engine.knn import KNNClassifier, raw_pixels
from helpers.lineage import train_and_evaluate, use_synthetic_banks


def pattern_bank(classes=8, per_class=10, size=6, seed=0) -> ClassBank:
    """Each class one fixed random binary image, repeated for every instance."""
    rng = np.random.default_rng(seed)
    groups = [np.repeat((rng.random((1, 1, size, size)) > 0.5).astype(np.uint8) * 255, per_class, 0)
              for _ in range(classes)]
    return ClassBank.from_groups(groups, [f"c{i}" for i in range(classes)])


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_fixed_class_patterns_are_perfect_from_the_second_instance(labels):
    cfg = EpisodeConfig(ways=5, instances=6, labels=labels)
    res = evaluate(KNNClassifier(raw_pixels), pattern_bank(), cfg, episodes=60, seed=3, batch_size=25)
    assert res["accuracy_by_instance"][1:] == [1.0] * 5
    # 1st instance: only the step-0 guess (symbol 0) can be right
    assert res["accuracy_by_instance"][0] < 0.2


def literal_knn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per episode, per step: the label of the first most cosine-similar earlier step."""
    b, t = targets.shape[:2]
    pred = torch.zeros_like(targets)
    flat = images.flatten(2).double()
    for i in range(b):
        for q in range(1, t):
            sims = [float(torch.nn.functional.cosine_similarity(flat[i, q], flat[i, s], dim=0, eps=1e-8))
                    for s in range(q)]
            pred[i, q] = targets[i, int(np.argmax(sims))]
    return pred


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_matches_a_literal_nearest_neighbour_loop(labels):
    cfg = EpisodeConfig(ways=4, instances=5, labels=labels)
    batch = to_tensors(evaluation_episodes(synthetic_bank(), cfg, seed=0, start=0, count=6), cfg)
    logits = KNNClassifier(raw_pixels)(batch.images, batch.label_inputs)
    pred = logits.reshape(*batch.targets.shape, cfg.group_size).argmax(-1)
    assert torch.equal(pred, literal_knn(batch.images, batch.targets))


def test_uses_only_earlier_steps():
    cfg = EpisodeConfig(ways=4, instances=5)
    batch = to_tensors(evaluation_episodes(synthetic_bank(), cfg, seed=0, start=0, count=4), cfg)
    knn = KNNClassifier(raw_pixels)
    base = knn(batch.images, batch.label_inputs)
    assert torch.equal(base[:, 0], torch.zeros_like(base[:, 0]))  # nothing stored at step 0
    t = 7
    images, labels = batch.images.clone(), batch.label_inputs.clone()
    images[:, t + 1:] = images[:, t:t + 1]  # exact copies of step t's image later on ...
    labels[:, t + 1:] = torch.roll(labels[:, t + 1:], 1, dims=-1)  # ... with other labels
    changed = knn(images, labels)
    assert torch.equal(changed[:, :t + 1], base[:, :t + 1])


def test_cli_runs_on_the_evaluate_episodes_with_the_same_keys(tmp_path, monkeypatch, capsys):
    _, test_bank = use_synthetic_banks(monkeypatch)
    mann = train_and_evaluate("mann", tmp_path)  # evaluate.py's JSON: 12 episodes, seed 0, 3-way, 4 instances
    path = tmp_path / "knn.json"
    rc = cli.main(["knn", "--ways", "3", "--instances", "4", "--image-size", "6", "--episodes", "12",
                   "--batch-size", "5", "--json", str(path), "--no-progress"])
    assert rc == 0 and "kNN (raw pixels)" in capsys.readouterr().out
    res = json.loads(path.read_text())
    assert set(mann) - set(res) == set()
    assert (res["episodes"], res["ways"], res["instances"], res["seed"]) == (12, 3, 4, 0)
    assert res["method"] == "knn" and res["features"] == "raw" and res["command"][:2] == ["fewshot-mann", "knn"]
    # the very episodes evaluate.py uses: recompute on evaluation_episodes(seed 0, 0..11)
    cfg = EpisodeConfig(ways=3, instances=4)
    direct = evaluate(KNNClassifier(raw_pixels), test_bank, cfg, episodes=12, seed=0, batch_size=12)
    assert res["accuracy_by_instance"] == pytest.approx(direct["accuracy_by_instance"])
    assert res["ci95"] == pytest.approx(direct["ci95"])


def test_cli_checkpoint_features(tmp_path, monkeypatch, capsys):
    use_synthetic_banks(monkeypatch)
    train_and_evaluate("mann", tmp_path)
    train_and_evaluate("lstm", tmp_path, extra=["--encoder", "conv"])
    linear, conv = tmp_path / "mann" / "checkpoint.pt", tmp_path / "lstm" / "checkpoint.pt"
    for features, layer in ((linear, "controller"), (conv, "encoder"), (conv, "controller")):
        path = tmp_path / f"knn-{layer}.json"
        rc = cli.main(["knn", "--features", str(features), "--layer", layer, "--episodes", "10",
                       "--json", str(path), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        res = json.loads(path.read_text())
        assert res["layer"] == layer and res["features"] == str(features) and res["ways"] == 3
        assert all(0 <= a <= 1 for a in res["accuracy_by_instance"])
    capsys.readouterr()
    rc = cli.main(["knn", "--features", str(linear), "--layer", "encoder", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: --layer encoder: this checkpoint's encoder is linear")
    rc = cli.main(["knn", "--features", str(linear), "--layer", "controller", "--ways", "4", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "reads 3-way onehot labels" in err[-1] and len(err) == 1


@pytest.mark.parametrize("argv,needle", [
    (["--episodes", "0"], "--episodes must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--threads", "-1"], "--threads must be in [0, 1024]"),
    (["--seed", "-3"], "--seed must be in [0, 2**63)"),
    (["--ways", "0"], "--ways must be at least 1"),
    (["--features", "/nonexistent/checkpoint.pt"], "does not exist"),
])
def test_cli_bad_input_is_one_clear_line(argv, needle, capsys):
    assert cli.main(["knn", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_centroid_classifier_by_hand():
    """Two labels; features chosen so the nearest centroid differs from the nearest neighbour."""
    from fewshot_mann.engine.knn import CentroidClassifier
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [0.75, 0.66]]])
    labels = [0, 1, 0, 1, 0]  # label of each step; the input of step t is the label of step t-1
    label_inputs = torch.zeros(1, 5, 2)
    for t in range(1, 5):
        label_inputs[0, t, labels[t - 1]] = 1.0
    out = CentroidClassifier(lambda images, li: images)(feats, label_inputs)
    assert out.shape == (1, 5, 2)
    assert (out[0, 0] == -1e4).all()  # nothing stored at step 0
    assert out[0, 1, 1] == -1e4 and out[0, 1].argmax() == 0  # only label 0 seen
    # step 4: centroid 0 = mean of (1,0),(0.6,0.8) -> (0.8,0.4)/|.|; centroid 1 = mean of (0,1),(0.8,0.6) -> (0.4,0.8)/|.|
    q = torch.tensor([0.75, 0.66]) / torch.tensor([0.75, 0.66]).norm()
    c0 = torch.tensor([0.8, 0.4]) / torch.tensor([0.8, 0.4]).norm()
    c1 = torch.tensor([0.4, 0.8]) / torch.tensor([0.4, 0.8]).norm()
    torch.testing.assert_close(out[0, 4], torch.stack([q @ c0, q @ c1]))
    # its nearest single neighbour is step 3 (label 1), the nearest centroid label 0
    assert out[0, 4].argmax() == 0
