"""evaluate.py --decode seen: the answer restricted to the labels given so far, checked against
a literal loop, its relation to the paper's free decoding, and the CLI's JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import evaluate as evaluate_script
from conftest import synthetic_bank, tiny_config
from fewshot_mann.config import EpisodeConfig
from fewshot_mann.episodes import evaluation_episodes, to_tensors
from fewshot_mann.evaluation import correct_steps, correct_steps_seen, evaluate
from fewshot_mann.models import build_model
from lineage_helpers import train_and_evaluate, use_synthetic_banks


def seen_reference(logits: torch.Tensor, targets: torch.Tensor, cfg: EpisodeConfig) -> torch.Tensor:
    """Slow and literal: at each step, score every distinct earlier label by the product of its
    symbols' probabilities and answer the best (the earliest on a tie)."""
    b, t, g = targets.shape
    probs = logits.reshape(b, t, g, cfg.group_size).double().softmax(-1)
    out = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        for step in range(t):
            truth = tuple(targets[i, step].tolist())
            if step == 0:
                answer = tuple(probs[i, 0].argmax(-1).tolist())
            else:
                best, answer = -1.0, None
                for u in range(step):
                    label = tuple(targets[i, u].tolist())
                    p = float(np.prod([probs[i, step, k, label[k]].item() for k in range(g)]))
                    if p > best:
                        best, answer = p, label
            out[i, step] = answer == truth
    return out


def random_batch(labels: str, seed: int):
    cfg = EpisodeConfig(ways=4, instances=3, labels=labels)
    ep = to_tensors(evaluation_episodes(synthetic_bank(classes=8, per_class=4), cfg, seed, 0, 6), cfg)
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*ep.targets.shape[:2], cfg.label_groups * cfg.group_size, generator=gen)
    return cfg, ep, logits


@pytest.mark.parametrize("labels", ["onehot", "string"])
@pytest.mark.parametrize("seed", [0, 1])
def test_seen_decoding_matches_the_literal_loop(labels, seed):
    cfg, ep, logits = random_batch(labels, seed)
    fast = correct_steps_seen(logits, ep.targets, cfg)
    assert torch.equal(fast, seen_reference(logits, ep.targets, cfg))
    assert fast.any() and not fast.all()  # random logits: some right, some wrong


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_seen_decoding_only_gains_on_shown_classes(labels):
    """Where the free answer is right on a class already shown, its label scores highest among
    the shown ones, so the restricted answer is right too; a class's first presentation (after
    step 0) is always wrong when restricted."""
    cfg, ep, logits = random_batch(labels, 2)
    free = correct_steps(logits, ep.targets, cfg)
    seen = correct_steps_seen(logits, ep.targets, cfg)
    shown = ep.instance > 0
    assert torch.all(seen[shown] >= free[shown])
    first = (ep.instance == 0)
    first[:, 0] = False
    assert not seen[first].any()
    assert torch.equal(seen[:, 0], free[:, 0])


def test_evaluate_reports_the_decoding_and_rejects_unknown_ones():
    cfg = tiny_config()
    cfg.episodes.labels = "string"
    model = build_model(cfg)
    bank = synthetic_bank(classes=8, per_class=cfg.episodes.instances)
    free = evaluate(model, bank, cfg.episodes, episodes=10, seed=1, batch_size=4)
    seen = evaluate(model, bank, cfg.episodes, episodes=10, seed=1, batch_size=4, decode="seen")
    assert (free["decode"], seen["decode"]) == ("free", "seen")
    assert seen["accuracy_by_instance"][0] <= free["accuracy_by_instance"][0] + 1e-12
    with pytest.raises(ValueError, match="decode"):
        evaluate(model, bank, cfg.episodes, episodes=2, decode="best")


def test_cli_decode_seen_writes_it_in_the_json(tmp_path, monkeypatch):
    use_synthetic_banks(monkeypatch)
    train_and_evaluate("mann", tmp_path, extra=["--labels", "string"])
    out = tmp_path / "seen.json"
    rc = evaluate_script.main(["--checkpoint", str(tmp_path / "mann" / "checkpoint.pt"), "--episodes", "12",
                               "--decode", "seen", "--json", str(out), "--no-progress"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["decode"] == "seen" and "--decode" in result["command"]
    assert len(result["accuracy_by_instance"]) == 4


@pytest.mark.parametrize("decode", ["free", "seen"])
def test_instance_breakdown_adds_up_to_evaluate(decode):
    from fewshot_mann.evaluation import instance_breakdown

    cfg = tiny_config()
    cfg.episodes.labels = "string"
    cfg.episodes.ways, cfg.episodes.instances = 3, 4
    model = build_model(cfg)
    bank = synthetic_bank(classes=8, per_class=4)
    res = evaluate(model, bank, cfg.episodes, episodes=9, seed=2, batch_size=4, decode=decode)
    for instance in (2, 4):
        got = instance_breakdown(model, bank, cfg.episodes, instance=instance, episodes=9, seed=2, batch_size=4,
                                 decode=decode)
        assert len(got["step"]) == 9 * 3  # one such step per class and episode
        assert got["correct"].mean() == pytest.approx(res["accuracy_by_instance"][instance - 1])
        assert np.all(got["gap"] >= 1) and np.all(got["step"] >= got["gap"])
        assert np.all(got["step"] >= instance - 1)
    # the literal definition of gap, on the episodes themselves
    ep = to_tensors(evaluation_episodes(bank, cfg.episodes, 2, 0, 4), cfg.episodes)
    got = instance_breakdown(model, bank, cfg.episodes, instance=2, episodes=4, seed=2, batch_size=4)
    expected = []
    for i in range(4):
        labels = [tuple(x) for x in ep.targets[i].tolist()]
        for step, label in enumerate(labels):
            if labels[:step].count(label) == 1:
                expected.append((step, step - labels.index(label)))
    assert list(zip(got["step"].tolist(), got["gap"].tolist())) == expected
