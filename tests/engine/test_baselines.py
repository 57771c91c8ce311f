"""The yardstick cannot cheat: baselines recomputed literally on the very trials the model gets, from the
support set alone; the model and its baselines draw the same trials; models are causal."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.episodes import evaluation_episodes
from fewshot_mann.engine import baselines as B


def random_bank(classes=7, per_class=9, shape=(1, 4, 4), seed=0) -> ClassBank:
    """Distinct random images: a centroid or a fit that used the wrong images would score differently."""
    rng = np.random.default_rng(seed)
    groups = [rng.integers(0, 256, (per_class, *shape), dtype=np.uint8) for _ in range(classes)]
    return ClassBank.from_groups(groups, [f"c{i}" for i in range(classes)])


def literal_trial_accuracy(bank, cfg, shots, queries, seed, index, head):
    ep = evaluation_episodes(bank, dataclasses.replace(cfg, instances=shots + queries), seed, index, 1)
    x = ep.images[0].reshape(ep.images.shape[1], -1).astype(np.float64) / 255.0
    y, sup = ep.labels[0], ep.instance[0] < shots
    if head == "centroid":
        cents = np.stack([x[sup & (y == c)].mean(0) for c in range(cfg.ways)])
        pred = ((x[~sup][:, None] - cents[None]) ** 2).sum(-1).argmin(1)
    else:
        pred = LogisticRegression(C=1.0, tol=1e-10, max_iter=100000).fit(x[sup], y[sup]).predict(x[~sup])
    return float((pred == y[~sup]).mean())


@pytest.mark.parametrize("head", ["centroid", "logistic"])
def test_kshot_baselines_equal_a_literal_recomputation_on_the_same_trials(head):
    bank, cfg = random_bank(), EpisodeConfig(ways=4)
    chosen = tuple(b for b in B.BASELINES if b.inputs == "pixels" and b.head == head)
    [res] = B.kshot_baselines({"pixels": bank}, chosen, cfg, shots=2, episodes=12, seed=3, queries=3, chunk=5)
    literal = [literal_trial_accuracy(bank, cfg, 2, 3, 3, i, head) for i in range(12)]
    np.testing.assert_array_equal(res.per_episode, literal)  # trial by trial: another seed or a query in a centroid fails
    assert 0.1 < np.mean(literal) < 0.95  # the data tells trials and methods apart


def test_kshot_model_and_baselines_draw_the_same_trials(monkeypatch):
    """Every (seed, episode index, episode shape) the model is scored on is one the baselines are scored on."""
    from fewshot_mann.engine import kshot

    calls = {"model": set(), "baselines": set()}
    real = evaluation_episodes

    def spy(who):
        def draw(bank, cfg, seed, start, count, groups=None):
            calls[who].update((seed, i, cfg.ways, cfg.instances) for i in range(start, start + count))
            return real(bank, cfg, seed, start, count, groups)
        return draw

    monkeypatch.setattr(kshot, "evaluation_episodes", spy("model"))
    monkeypatch.setattr(B, "evaluation_episodes", spy("baselines"))
    from fewshot_mann.config import Config
    cfg = Config()
    cfg.episodes.ways, cfg.data.image_size = 3, 4
    model = torch.nn.Sequential()  # never asked: replaced below
    monkeypatch.setattr(kshot, "kshot_accuracy", lambda m, bank, ep_cfg, shots, episodes, seed, **kw: (
        [kshot.support_query_episodes(bank, ep_cfg, shots, seed, 0, episodes, kw["queries"])] and
        {"accuracy": 0.5, "ci95": 0.0}))
    bank = random_bank(classes=5, per_class=6)
    kshot.kshot_table(model, bank, bank, cfg, [3], [1, 2], episodes=7, seed=11, queries=2, progress=False,
                      log=lambda *_: None)
    assert calls["model"] and calls["model"] == calls["baselines"]


def literal_by_instance(bank, cfg, episodes, seed, predict) -> np.ndarray:
    """(episodes, instances) accuracy of ``predict(x_told, y_told, x_step, told_labels)`` asked at every step
    of evaluate's episodes about that step, fitted on the steps before it only; no label told yet: label 0."""
    steps = cfg.ways * cfg.instances
    right = np.zeros((episodes, cfg.instances))
    for i in range(episodes):
        ep = evaluation_episodes(bank, cfg, seed, i, 1)
        x = ep.images[0].reshape(steps, -1).astype(np.float64) / 255.0
        y, inst = ep.labels[0], ep.instance[0]
        for t in range(steps):
            told = sorted(set(y[:t].tolist()))
            pred = predict(x[:t], y[:t], x[t], told) if told else 0
            right[i, inst[t]] += (pred == y[t]) / cfg.ways
    return right


def test_by_instance_baselines_equal_a_literal_causal_recomputation():
    bank, cfg = random_bank(classes=6, per_class=5), EpisodeConfig(ways=3, instances=4)
    [res], _ = B.by_instance_baselines({"pixels": bank}, (B.BASELINES[0],), cfg, episodes=10, seed=5, batch_size=4)

    def nearest_centroid(xs, ys, x, told):
        cents = {c: xs[ys == c].mean(0) for c in told}
        return min(told, key=lambda c: ((x - cents[c]) ** 2).sum())
    right = literal_by_instance(bank, cfg, 10, 5, nearest_centroid)
    np.testing.assert_allclose(res["accuracy_by_instance"], right.mean(0), atol=1e-12)


def test_by_instance_logistic_regression_equals_scikit_learn_fitted_on_the_steps_told():
    """The by-instance logistic baseline, solved one step (prefix of told steps) at a time, answers as
    scikit-learn (``class_weight="balanced"``: the steps told are uneven) fitted on exactly the steps before
    each step; a fit that saw the step itself or a step more would answer otherwise on these random images."""
    bank, cfg = random_bank(classes=6, per_class=5, seed=2), EpisodeConfig(ways=3, instances=4)
    [logistic] = [b for b in B.BASELINES if b.inputs == "pixels" and b.head == "logistic"]
    [res], _ = B.by_instance_baselines({"pixels": bank}, (logistic,), cfg, episodes=8, seed=5, batch_size=3)

    def scikit_learn(xs, ys, x, told):  # one label told: it is the answer (scikit-learn needs two)
        if len(told) < 2:
            return told[0]
        fit = LogisticRegression(C=1.0, tol=1e-10, max_iter=100000, class_weight="balanced")
        return fit.fit(xs, ys).predict(x[None])[0]
    right = literal_by_instance(bank, cfg, 8, 5, scikit_learn)
    np.testing.assert_allclose(res["accuracy_by_instance"], right.mean(0), atol=1e-12)
    assert 0.2 < right[:, 1:].mean() < 0.95


def test_feature_models_are_causal():
    """A change to a later image leaves every earlier answer bit-identical (centring uses steps seen so far)."""
    from fewshot_mann.config import Config
    from fewshot_mann.models.encoders import FeatureEncoder
    from fewshot_mann.models.keyed import KeyedMemory

    torch.manual_seed(0)
    feats = torch.randn(2, 9, 16)
    later = feats.clone()
    later[:, 6:] += torch.randn(2, 3, 16)
    enc = FeatureEncoder(16, "center-l2")
    assert torch.equal(enc(feats)[:, :6], enc(later)[:, :6])
    cfg = Config()
    cfg.model.model, cfg.model.encoder, cfg.model.feature_dim = "keyed", "timm:x", 16
    cfg.episodes.ways = 3
    model = KeyedMemory(cfg).eval()
    labels = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 9)), 3).float()
    labels[:, 0] = 0
    with torch.no_grad():
        assert torch.equal(model(feats, labels)[:, :6], model(later, labels)[:, :6])


def test_by_instance_logistic_regression_too_large_to_fit_is_skipped_and_said():
    """Episodes whose last prefix fit exceeds ``PREFIX_LOGISTIC_MAX_UNKNOWNS`` get nearest centroid, and the
    logistic row is reported as not run with its reason, not silently dropped; string labels get none."""
    bank = random_bank(classes=12, per_class=12, seed=4)
    small, wide = EpisodeConfig(ways=3, instances=4), EpisodeConfig(ways=10, instances=10)
    assert B.prefix_logistic_unknowns(small) <= B.PREFIX_LOGISTIC_MAX_UNKNOWNS < B.prefix_logistic_unknowns(wide)
    pixel_rows = B.baselines_for({"pixels"})
    rows, skipped = B.by_instance_baselines({"pixels": bank}, pixel_rows, wide, episodes=2, seed=0, batch_size=2)
    assert [r["name"] for r in rows] == ["nearest-centroid-raw-pixels"]
    assert [s["name"] for s in skipped] == ["logistic-regression-raw-pixels"] and "unknowns" in skipped[0]["reason"]
    rows, skipped = B.by_instance_baselines({"pixels": bank}, pixel_rows, small, episodes=2, seed=0, batch_size=2)
    assert len(rows) == 2 and skipped == []
    strings = EpisodeConfig(ways=3, instances=4, labels="string")
    rows, skipped = B.by_instance_baselines({"pixels": bank}, pixel_rows, strings, episodes=2, seed=0, batch_size=2)
    assert rows == [] and len(skipped) == 2 and all("string" in s["reason"] for s in skipped)
    lines = B.by_instance_lines([], skipped)
    assert len(lines) == 2 and all("not run" in line for line in lines)


def test_a_model_reading_block_stages_is_also_measured_against_its_backbones_head_alone():
    """``--feature-stages``: beside the features' own baselines, the notebook's (the head block alone, unit length),
    recomputed literally: a fit on the joined features or on the unscaled head would score differently."""
    pytest.importorskip("timm")
    from fewshot_mann.config import ModelConfig
    from fewshot_mann.models.backbones import head_width

    m = ModelConfig(model="keyed", encoder="timm:test_efficientnet", encoder_weights="none", feature_stages=1)
    width = head_width(m.encoder)
    rng = np.random.default_rng(0)
    counts = [9] * 6
    feats = rng.normal(size=(sum(counts), width + 8)).astype(np.float32)
    feats[:, width:] *= 20  # a stage block that dominates the joined features
    bank = ClassBank(feats, np.cumsum([0] + counts[:-1]), np.asarray(counts), [f"c{i}" for i in range(6)])
    banks = B.feature_banks(bank, m)
    assert set(banks) == {"features", "head"}
    chosen = B.baselines_for({"pixels", *banks})
    assert [b.name for b in chosen if b.inputs == "head"] == ["nearest-centroid-head-features",
                                                                "logistic-regression-head-features"]
    assert B.feature_banks(bank, dataclasses.replace(m, feature_stages=0)).keys() == {"features"}
    cfg = EpisodeConfig(ways=3)
    got = B.kshot_baselines(banks, tuple(b for b in chosen if b.inputs != "pixels"), cfg, shots=2, episodes=10, seed=1,
                            queries=3)
    head = feats[:, :width] / np.linalg.norm(feats[:, :width], axis=1, keepdims=True)
    literal = B.kshot_baselines({"features": ClassBank(head, bank.offsets, bank.counts, list(bank.names))},
                                tuple(b for b in B.BASELINES if b.inputs == "features"), cfg, shots=2, episodes=10,
                                seed=1, queries=3)
    by_name = {r.baseline.name: r.per_episode for r in got}
    for r in literal:
        np.testing.assert_array_equal(by_name[r.baseline.name.replace("-features", "-head-features")], r.per_episode)
    assert not np.array_equal(by_name["logistic-regression-head-features"], by_name["logistic-regression-features"])


def test_a_model_whose_encoder_trains_with_it_is_measured_against_that_encoders_features():
    """``--encoder conv`` / ``conv4``: the features' baselines read what the memory reads, the encoder's outputs
    in evaluation mode (recomputed here); a raw-pixel model has no features' baselines, a backbone's bank is
    its features as they are."""
    from fewshot_mann.config import ModelConfig
    from fewshot_mann.models.registry import build_model
    from helpers import tiny_config

    bank = random_bank(classes=5, per_class=6, shape=(1, 16, 16), seed=2)
    cfg = tiny_config(encoder="conv4", feature_norm="l2")
    cfg.data.image_size = 16
    torch.manual_seed(0)
    model = build_model(cfg).train()
    banks = B.feature_banks(bank, cfg.model, model)
    assert set(banks) == {"features"} and model.training  # left as it was
    model.eval()
    with torch.no_grad():
        literal = model.encoder(torch.from_numpy(bank.images).float().div(255).unsqueeze(1)).squeeze(1)
    assert np.allclose(banks["features"].images, literal.double().numpy(), atol=1e-6)
    assert [b.name for b in B.baselines_for({"pixels", *banks})] == [
        "nearest-centroid-raw-pixels", "logistic-regression-raw-pixels", "nearest-centroid-features",
        "logistic-regression-features"]
    assert B.feature_banks(bank, tiny_config().model, build_model(tiny_config())) == {}
    assert B.feature_banks(bank, ModelConfig(encoder="fewshot:conv4")) == {"features": bank}


def test_raw_pixel_baselines_of_big_inputs_read_area_means_at_32_px():
    """``loading.shrink``: each 32-px pixel the mean of the pixels it covers, whether or not 32 divides the size
    (a 260-px ensemble input once kept all 202,800 values a trial and ran out of memory)."""
    from fewshot_mann.engine.loading import shrink

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
    big = ClassBank(np.repeat(np.repeat(blocks, 7, axis=2), 7, axis=3), np.array([0]), np.array([2]), ["a"])
    assert np.array_equal(shrink(big).images, blocks)  # 224 = 7 x 32: the blocks' means
    odd = rng.integers(0, 256, (2, 3, 260, 260)).astype(np.uint8)
    got = shrink(ClassBank(odd, np.array([0]), np.array([2]), ["a"])).images
    assert got.shape == (2, 3, 32, 32) and got.dtype == np.uint8
    lo, hi = (0 * 260) // 32, -(-(1 * 260) // 32)  # the first output pixel covers input rows/cols 0..8
    assert abs(int(got[0, 0, 0, 0]) - odd[0, 0, lo:hi, lo:hi].mean()) <= 0.5
