"""Label-shifted episodes: labels, instance indices, shuffling, encodings, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import synthetic_bank
from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.episodes import (batch_rng, check_bank, episode_rng, evaluation_episodes, sample_episodes,
                                   to_tensors, Jitter)
from fewshot_mann.errors import DataError


@pytest.fixture
def bank():
    return synthetic_bank(classes=9, per_class=11)


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_label_of_step_t_is_input_at_t_plus_1(bank, labels):
    cfg = EpisodeConfig(ways=4, instances=3, labels=labels)
    ep = sample_episodes(bank, cfg, np.random.default_rng(0), 5)
    tb = to_tensors(ep, cfg)
    assert tb.label_inputs.shape == (5, 12, cfg.label_size)
    assert torch.all(tb.label_inputs[:, 0] == 0)
    target_onehot = torch.nn.functional.one_hot(tb.targets, cfg.group_size).flatten(2).float()
    assert torch.equal(tb.label_inputs[:, 1:], target_onehot[:, :-1])
    assert torch.all(tb.label_inputs[:, 1:].sum(-1) == cfg.label_groups)


def test_each_class_appears_instances_times_with_instance_index(bank):
    cfg = EpisodeConfig(ways=5, instances=4)
    ep = sample_episodes(bank, cfg, np.random.default_rng(1), 20)
    for b in range(20):
        for label in range(5):
            steps = np.flatnonzero(ep.labels[b] == label)
            assert len(steps) == 4
            assert ep.instance[b, steps].tolist() == [0, 1, 2, 3]  # k-th presentation, in order
            cls = ep.classes[b, label]
            lo, hi = bank.offsets[cls], bank.offsets[cls] + bank.counts[cls]
            # images of this label come from its class, all different images
            flat = ep.images[b, steps].reshape(4, -1)
            members = bank.images[lo:hi].reshape(hi - lo, -1)
            idx = [int(np.flatnonzero((members == f).all(1))[0]) for f in flat]
            assert len(set(idx)) == 4
        assert len(set(ep.classes[b].tolist())) == 5  # distinct classes


def test_order_and_labels_are_shuffled(bank):
    cfg = EpisodeConfig(ways=5, instances=4)
    ep = sample_episodes(bank, cfg, np.random.default_rng(2), 200)
    first_labels = np.bincount(ep.labels[:, 0], minlength=5)
    assert first_labels.min() > 20  # every label starts an episode sometimes
    # The same class does not always get the same label.
    labels_of_class = {}
    for b in range(200):
        for label, cls in enumerate(ep.classes[b]):
            labels_of_class.setdefault(int(cls), set()).add(label)
    assert all(len(s) == 5 for s in labels_of_class.values())
    assert not np.all(ep.instance[:, :5] == 0)  # a class can repeat early


def test_string_labels_distinct_within_episode(bank):
    cfg = EpisodeConfig(ways=9, instances=2, labels="string")
    ep = sample_episodes(bank, cfg, np.random.default_rng(3), 30)
    assert ep.label_digits.shape == (30, 9, 5)
    assert ep.label_digits.min() >= 0 and ep.label_digits.max() <= 4
    for b in range(30):
        assert len({tuple(d) for d in ep.label_digits[b].tolist()}) == 9


def test_seeded_determinism(bank):
    cfg = EpisodeConfig(ways=3, instances=5)
    a = sample_episodes(bank, cfg, batch_rng(7, 11), 4)
    b = sample_episodes(bank, cfg, batch_rng(7, 11), 4)
    c = sample_episodes(bank, cfg, batch_rng(7, 12), 4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_evaluation_episode_is_function_of_seed_and_index(bank):
    cfg = EpisodeConfig(ways=3, instances=5)
    whole = evaluation_episodes(bank, cfg, seed=5, start=0, count=10)
    part = evaluation_episodes(bank, cfg, seed=5, start=4, count=3)
    single = sample_episodes(bank, cfg, episode_rng(5, 6), 1)
    assert np.array_equal(whole.images[4:7], part.images)
    assert np.array_equal(whole.labels[6], single.labels[0])


def test_check_bank_errors(bank):
    with pytest.raises(DataError, match="--ways 10 needs 10 classes"):
        check_bank(bank, EpisodeConfig(ways=10, instances=2))
    with pytest.raises(DataError, match="--instances 12"):
        check_bank(bank, EpisodeConfig(ways=2, instances=12))


def test_jitter_keeps_shape_and_is_seeded():
    images = torch.rand(2, 3, 1, 8, 8)
    jitter = Jitter(2, 10)
    a = jitter(images, torch.Generator().manual_seed(0))
    b = jitter(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, images)
    assert torch.equal(Jitter(0, 0)(images, None), images)
