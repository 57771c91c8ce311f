"""evaluate.py --decode seen: the answer restricted to the labels given so far, checked against
a literal loop, its relation to the paper's free decoding, and the CLI's JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import evaluate as evaluate_script
from helpers import synthetic_bank, tiny_config
from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.episodes import evaluation_episodes, to_tensors
from fewshot_mann.engine.evaluation import correct_steps, correct_steps_seen, evaluate
from fewshot_mann.models.registry import build_model
from helpers.lineage import train_and_evaluate, use_synthetic_banks


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
    from fewshot_mann.engine.evaluation import instance_breakdown

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


# ----------------------------------------------------------------------------- hand-computed arithmetic

def test_per_episode_instance_accuracy_by_hand():
    from fewshot_mann.engine.evaluation import per_episode_instance_accuracy

    correct = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    instance = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2]])
    got = per_episode_instance_accuracy(correct, instance, 4)
    # episode 0: instance 0 -> 1 of 2, instance 1 -> 2 of 2, instance 2 -> 1 of 2; instance 3 never shown -> 0
    # episode 1: instance 0 -> steps 0, 3 -> 1 of 2; instance 1 -> steps 1, 4; instance 2 -> steps 2, 5
    assert got.tolist() == [[0.5, 1.0, 0.5, 0.0], [0.5, 0.5, 0.5, 0.0]]


def test_summarise_normal_interval_and_wilson_where_every_episode_scored_the_same():
    from fewshot_mann.engine.evaluation import summarise, wilson_half_width

    acc = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.5, 0.0, 1.0], [0.5, 0.0, 1.0]])
    mean, ci = summarise(acc)
    assert mean == [0.5, 0.0, 1.0]
    # column 0: sd (ddof=1) = sqrt((0.25 + 0.25 + 0 + 0) / 3) = 0.4082483; 1.96 * sd / sqrt(4) = 0.4000833
    assert ci[0] == pytest.approx(0.4000833, abs=1e-6)
    # columns 1, 2: every episode the same -> Wilson at p = 0 / 1, n = 4: 1.96^2 / (4 + 1.96^2) = 0.4899000
    assert ci[1] == pytest.approx(0.4899000, abs=1e-6) and ci[2] == pytest.approx(0.4899000, abs=1e-6)
    # p = 0, n = 1000: 3.8416 / 1003.8416 = 0.0038269
    assert wilson_half_width(0.0, 1000) == pytest.approx(0.0038269, abs=1e-7)
    assert summarise(np.zeros((1000, 1)))[1] == [pytest.approx(0.0038269, abs=1e-7)]
    # p = 0.5, n = 5: centre 0.5, half = 1.96 * sqrt(0.05 + 0.038416) / 1.76832 = 0.3295798
    assert wilson_half_width(0.5, 5) == pytest.approx(0.3295798, abs=1e-6)


def test_correct_steps_needs_every_label_group_right():
    cfg = EpisodeConfig(ways=3, instances=1, labels="onehot")
    logits = torch.tensor([[[0.1, 2.0, 0.3], [5.0, 1.0, 1.0], [0.0, 0.0, 9.0]]])
    targets = torch.tensor([[[1], [1], [2]]])
    assert correct_steps(logits, targets, cfg).tolist() == [[True, False, True]]
    s = EpisodeConfig(ways=2, instances=1, labels="string")  # 5 groups of 5 symbols
    logits = torch.zeros(1, 2, 25)
    code = [0, 1, 2, 3, 4]
    for g, symbol in enumerate(code):
        logits[0, :, 5 * g + symbol] = 1.0
    logits[0, 1, 5 * 4 + 0] = 2.0  # step 1: the last character's argmax is 0, not 4
    targets = torch.tensor([[code, code]])
    assert correct_steps(logits, targets, s).tolist() == [[True, False]]


def test_seen_decoding_keeps_the_free_answer_at_step_0_only():
    """Step 0 has no earlier label: the free answer is kept (right or wrong); a later first
    presentation is wrong even where the free answer is right."""
    cfg = EpisodeConfig(ways=3, instances=1, labels="onehot")
    targets = torch.tensor([[[2], [0], [2]], [[1], [0], [1]]])
    logits = torch.tensor([[[0.0, 0.0, 3.0], [4.0, 0.0, 1.0], [0.0, 0.0, 5.0]],   # free: right, right, right
                           [[3.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 2.0, 0.0]]])  # free: wrong, right, right
    assert correct_steps(logits, targets, cfg).tolist() == [[True, True, True], [False, True, True]]
    assert correct_steps_seen(logits, targets, cfg).tolist() == [[True, False, True], [False, False, True]]


class RecallStub(torch.nn.Module):
    """Answers the label given after the first earlier step showing the same image, else label 0
    (images of a class are identical, so every class's later presentations are answered right)."""

    def __init__(self, ways):
        super().__init__()
        self.ways = ways

    def forward(self, images, label_inputs):
        b, t = images.shape[:2]
        flat = images.reshape(b, t, -1)
        out = torch.zeros(b, t, self.ways)
        for i in range(b):
            for step in range(t):
                answer = 0
                for u in range(step):
                    if torch.equal(flat[i, u], flat[i, step]):
                        answer = int(label_inputs[i, u + 1].argmax())
                        break
                out[i, step, answer] = 10.0
        return out


def test_evaluate_pooled_numbers_on_a_stub_model():
    from fewshot_mann.data.bank import ClassBank

    cfg = EpisodeConfig(ways=2, instances=3, labels="onehot")
    groups = [np.full((3, 1, 4, 4), 10 * (c + 1), np.uint8) for c in range(4)]
    bank = ClassBank.from_groups(groups, [f"c{c}" for c in range(4)])
    res = evaluate(RecallStub(2), bank, cfg, episodes=5, seed=0, batch_size=2)
    # 1st instance: exactly one of the 2 classes has label 0 -> 0.5 in every episode; later: 1.0
    assert res["accuracy_by_instance"] == [0.5, 1.0, 1.0]
    assert res["accuracy"] == pytest.approx(2.5 / 3, abs=1e-12)
    # every episode the same -> Wilson, n = 5: p = 0.5 -> 0.3295798; p = 1 -> 3.8416 / 8.8416 = 0.4344915
    assert res["ci95"] == [pytest.approx(0.3295798, abs=1e-6), pytest.approx(0.4344915, abs=1e-6),
                           pytest.approx(0.4344915, abs=1e-6)]
    assert res["_per_episode"].shape == (5, 3) and res["episodes"] == 5


# ------------------------------------------------- each distinct image projected once

def literal_evaluation(model, bank, cfg, episodes, batch_size):
    """What evaluate computes, the plain way: every appearance of an image through model()."""
    from fewshot_mann.engine.evaluation import per_episode_instance_accuracy

    rows = []
    with torch.inference_mode():
        for first in range(0, episodes, batch_size):
            tb = to_tensors(evaluation_episodes(bank, cfg, 0, first, min(batch_size, episodes - first)), cfg)
            ok = correct_steps(model(tb.images, tb.label_inputs), tb.targets, cfg)
            rows.append(per_episode_instance_accuracy(ok, tb.instance, cfg.instances).numpy())
    return np.concatenate(rows).mean(0)


@pytest.mark.parametrize("encoder", ["linear", "conv"])
@pytest.mark.parametrize("backend_name", ["autograd", "sequence", "auto"])
def test_projected_images_give_the_same_logits_and_accuracies(encoder, backend_name):
    from fewshot_mann.engine.evaluation import BankProjection

    cfg = tiny_config(encoder=encoder, memory_backend=backend_name)
    cfg.data.image_size = 8
    bank = synthetic_bank(classes=8, per_class=12, size=8)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.projects_images
    with torch.inference_mode():
        drawn = evaluation_episodes(bank, cfg.episodes, 3, 0, 7)
        tb = to_tensors(drawn, cfg.episodes)
        projection = BankProjection.for_model(model, bank, "cpu")
        rows = projection.rows(drawn.image_index)
        assert rows.shape == (7, cfg.episodes.steps, 4 * cfg.model.controller_size)
        plain = model(tb.images, tb.label_inputs)
        projected = model.forward_projected(rows, tb.label_inputs)
        calls = []
        real = model.project_images
        model.project_images = lambda x: calls.append(len(x)) or real(x)
        projection.rows(drawn.image_index)
        assert calls == [len(np.unique(drawn.image_index))]  # each distinct image once
    assert torch.allclose(plain, projected, atol=1e-5, rtol=1e-5)
    # the episodes' image_index names the very images the episodes hold
    assert np.array_equal(bank.images[drawn.image_index], drawn.images)
    got = evaluate(model, bank, cfg.episodes, episodes=30, batch_size=8)["accuracy_by_instance"]
    assert np.allclose(got, literal_evaluation(model, bank, cfg.episodes, 30, 8), atol=1e-12)


def test_features_centred_on_their_episode_are_not_projected_per_image():
    cfg = tiny_config(encoder="timm:test_efficientnet", feature_dim=6)
    assert not build_model(cfg).projects_images
    cfg.model.feature_norm = "l2"
    assert build_model(cfg).projects_images


@pytest.mark.parametrize("model_name", ["ntm", "dnc"])
def test_projected_images_serve_every_memory(model_name):
    from fewshot_mann.engine.evaluation import BankProjection

    cfg = tiny_config(model=model_name)
    bank = synthetic_bank(classes=8, per_class=12, size=cfg.data.image_size)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.inference_mode():
        drawn = evaluation_episodes(bank, cfg.episodes, 1, 0, 4)
        tb = to_tensors(drawn, cfg.episodes)
        rows = BankProjection.for_model(model, bank, "cpu").rows(drawn.image_index)
        assert torch.allclose(model(tb.images, tb.label_inputs), model.forward_projected(rows, tb.label_inputs),
                              atol=1e-5, rtol=1e-5)


def test_a_batch_that_shows_most_images_once_is_not_projected():
    from fewshot_mann.engine.evaluation import BankProjection

    cfg = tiny_config()
    bank = synthetic_bank(classes=40, per_class=12, size=cfg.data.image_size)  # 480 images
    model = build_model(cfg).eval()
    projection = BankProjection.for_model(model, bank, "cpu")
    with torch.inference_mode():
        few = evaluation_episodes(bank, cfg.episodes, 0, 0, 2)  # 100 steps, nearly all distinct images
        many = evaluation_episodes(bank, cfg.episodes, 0, 0, 40)  # 2,000 steps over 480 images
        assert projection.rows(few.image_index) is None
        assert projection.rows(many.image_index).shape == (40, cfg.episodes.steps, 4 * cfg.model.controller_size)
