"""The K-shot protocol: support then one query per copy; a nearest-neighbour oracle scores 100%."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers import synthetic_bank
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import EpisodeConfig
from fewshot_mann.engine.kshot import kshot_accuracy, support_query_episodes
from fewshot_mann.errors import UserError


class NearestEarlier(torch.nn.Module):
    """Answers each step with the label of the most similar earlier labelled image."""

    def forward(self, images, label_inputs):
        x = torch.nn.functional.normalize(images.flatten(2), dim=-1)
        b, t, _ = x.shape
        sim = x @ x.transpose(1, 2)
        sim = sim.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(-1), -2.0)
        nearest = sim.argmax(-1)  # (B,T)
        labels_of = torch.cat([label_inputs[:, 1:], torch.zeros_like(label_inputs[:, :1])], 1)  # label of step s
        return torch.gather(labels_of, 1, nearest[..., None].expand(-1, -1, labels_of.shape[-1])) * 10


def test_support_query_sequences():
    bank = synthetic_bank(classes=8, per_class=7)
    cfg = EpisodeConfig(ways=4, instances=10)
    seq = support_query_episodes(bank, cfg, shots=2, seed=3, start=0, count=5)
    assert seq.images.shape[:2] == (20, 9)
    for e in range(5):
        rows = range(4 * e, 4 * e + 4)
        support = [seq.images[r, :8] for r in rows]
        assert all(np.array_equal(support[0], s) for s in support)  # same support for every query
        for q, r in enumerate(rows):
            assert seq.labels[r, -1] == q
            assert sorted(np.bincount(seq.labels[r, :8], minlength=4)) == [2, 2, 2, 2]
            # the query image is not one of the support images
            assert not any(np.array_equal(seq.images[r, -1], s) for s in seq.images[r, :8])


def test_oracle_gets_everything_right_on_separable_classes():
    groups = [np.full((6, 1, 4, 4), 10 + 20 * c, np.uint8) + np.eye(4, dtype=np.uint8)[c % 4] for c in range(9)]
    bank = ClassBank.from_groups(groups, [str(c) for c in range(9)])
    for shots in (1, 3):
        res = kshot_accuracy(NearestEarlier(), bank, EpisodeConfig(ways=5, instances=10), shots, episodes=12, seed=1)
        assert res["accuracy"] == 1.0 and res["shots"] == shots


def test_episodes_within_one_group_draw_all_their_classes_from_it():
    from fewshot_mann.data.episodes import evaluation_episodes, name_groups
    from fewshot_mann.engine.kshot import support_query_episodes

    bank = synthetic_bank(classes=12)
    bank = dataclasses.replace(bank, names=[f"alphabet{i % 3}/character{i}" for i in range(12)])
    groups = name_groups(bank.names)
    assert [g.tolist() for g in groups] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    cfg = EpisodeConfig(ways=3, instances=2)
    drawn = evaluation_episodes(bank, cfg, 5, 0, 40, groups)
    used = set()
    for e in range(40):
        alphabets = {bank.names[c].split("/")[0] for c in drawn.classes[e]}
        assert len(alphabets) == 1
        used |= alphabets
        assert np.array_equal(bank.images[drawn.image_index[e]], drawn.images[e])  # rows of the whole bank
    assert used == {"alphabet0", "alphabet1", "alphabet2"}
    again = evaluation_episodes(bank, cfg, 5, 10, 5, groups)  # a pure function of (seed, index)
    assert np.array_equal(again.images, drawn.images[10:15])
    seq = support_query_episodes(bank, cfg, 1, 5, 0, 4, groups=groups)
    assert all(len({bank.names[c].split("/")[0] for c in row}) == 1 for row in seq.classes)
    with pytest.raises(UserError, match="no group of classes"):
        evaluation_episodes(bank, EpisodeConfig(ways=5, instances=2), 0, 0, 1, groups)


@pytest.mark.parametrize("write", ["mean", "logistic"])
@pytest.mark.parametrize("norm", ["l2", "center-l2"])
def test_reading_the_support_once_answers_as_one_sequence_per_query(norm, write):
    """kshot's fast path for the keyed memory (support written once, every query read against it) gives the
    logits of the literal protocol (one support + query sequence per query), trained map included."""
    from fewshot_mann.config import Config
    from fewshot_mann.data.bank import FeatureBank
    from fewshot_mann.engine.kshot import _sequence_logits, support_once_logits
    from fewshot_mann.models.keyed import KeyedMemory

    cfg = Config()
    cfg.model.model, cfg.model.encoder, cfg.model.feature_dim, cfg.model.feature_norm = "keyed", "timm:x", 16, norm
    cfg.model.keyed_write = write
    model = KeyedMemory(cfg).eval()
    with torch.no_grad():
        model.residual.weight.normal_(0, 0.1)  # a trained map: nothing skipped
        model.unseen.fill_(-3.0)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(9 * 8, 16)).astype(np.float32) + np.repeat(rng.normal(size=(9, 16)), 8, 0)
    bank = FeatureBank(feats, np.arange(9) * 8, np.full(9, 8), [str(c) for c in range(9)])
    ep = EpisodeConfig(ways=4, instances=10)
    for shots in (1, 3):
        with torch.inference_mode():
            fast, targets, seq = support_once_logits(model, bank, ep, shots, 7, 2, 5, 3, None, "cpu")
        slow, slow_targets, slow_seq = _sequence_logits(model, bank, ep, shots, 7, 2, 5, 3, None, "cpu", 0)
        torch.testing.assert_close(fast, slow[:, -1], rtol=1e-5, atol=1e-5)
        assert torch.equal(targets, slow_targets)
        assert np.array_equal(seq.labels[:, -1], slow_seq.labels[:, -1])
        assert np.array_equal(seq.classes, slow_seq.classes) and np.array_equal(seq.label_digits, slow_seq.label_digits)
        as_sequences = torch.nn.Sequential()  # the same model without the fast path: forward only
        as_sequences.forward = model.forward
        assert model.reads_support_once and not hasattr(as_sequences, "reads_support_once")
        assert (kshot_accuracy(model, bank, ep, shots, episodes=6, seed=7, queries=3)["accuracy"]
                == kshot_accuracy(as_sequences, bank, ep, shots, episodes=6, seed=7, queries=3)["accuracy"])
