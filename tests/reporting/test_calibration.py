"""Calibration maths against literal definitions: ECE by hand, AUROC by counting pairs, a temperature
recovered from answers drawn at a known one; the checkpoint record round trip and its damage."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fewshot_mann.errors import CheckpointError
from fewshot_mann.reporting import calibration as cal


def test_ece_is_the_weighted_gap_per_bin_computed_by_hand():
    # bin [0.6, 0.667): 2 answers at 0.62 / 0.64, one right -> gap |0.5 - 0.63| = 0.13, weight 2/4
    # bin [0.933, 1]: 0.95 and 1.0, both right -> gap |1 - 0.975| = 0.025, weight 2/4
    out = cal.expected_calibration_error(np.array([0.62, 0.64, 0.95, 1.0]), np.array([1, 0, 1, 1]))
    assert out["ece"] == pytest.approx(0.5 * 0.13 + 0.5 * 0.025)
    assert len(out["bins"]) == 15 and sum(b["count"] for b in out["bins"]) == 4
    assert out["bins"][9]["count"] == 2 and out["bins"][14]["count"] == 2  # 1.0 falls in the last bin
    assert out["bins"][0]["accuracy"] is None


def test_a_calibrated_source_has_small_ece_and_an_overconfident_one_does_not():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 200_000)
    assert cal.expected_calibration_error(conf, rng.random(conf.size) < conf)["ece"] < 0.01
    assert cal.expected_calibration_error(conf, rng.random(conf.size) < conf - 0.15)["ece"] > 0.1


def test_fit_temperature_recovers_the_temperature_the_answers_were_drawn_at():
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 3, (20_000, 5))
    for true_t in (0.5, 2.0):
        p = cal.softmax(scores, true_t)
        target = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
        got = cal.fit_temperature(scores, target)
        assert got == pytest.approx(true_t, rel=0.05)
        assert cal.negative_log_likelihood(scores, target, got) <= cal.negative_log_likelihood(scores, target, 1.0)


def test_auroc_equals_the_share_of_ordered_pairs_ties_half():
    rng = np.random.default_rng(2)
    known, unknown = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairs = [1.0 if k > u else 0.5 if k == u else 0.0 for k, u in itertools.product(known, unknown)]
    assert cal.auroc(known, unknown) == pytest.approx(np.mean(pairs))
    assert cal.auroc([2, 3], [0, 1]) == 1.0 and cal.auroc([0, 1], [2, 3]) == 0.0


def test_unknown_threshold_keeps_the_asked_share_of_known_queries():
    known = np.arange(1000, dtype=float)
    cut = cal.unknown_threshold(known, keep=0.9)
    assert (known >= cut).mean() == pytest.approx(0.9, abs=0.002)


def test_unflagged_counts_the_answers_at_or_above_the_cut():
    out = cal.unflagged(np.array([0.5, 0.6, 0.9, 0.95]), np.array([0, 0, 1, 0]), 0.6)
    assert out["fraction_unflagged"] == 0.75 and out["unflagged_accuracy"] == pytest.approx(1 / 3)
    assert out["flagged_accuracy"] == 0.0


def test_record_round_trip_nearest_shots_and_no_record():
    rec = cal.Calibration("somewhere", 5, (cal.ShotsCalibration(1, 0.9, 3.0), cal.ShotsCalibration(5, 0.4, 5.0)))
    back = cal.Calibration.from_dict(rec.to_dict())
    assert back == rec
    assert back.for_shots(1).temperature == 0.9 and back.for_shots(3).shots == 5 and back.for_shots(2).shots == 1
    none = cal.checkpoint_calibration({})
    assert not none.fitted and none.for_shots(5).temperature == 1.0 and none.for_shots(5).unknown_threshold is None
    with pytest.raises(CheckpointError, match="calibration record is damaged"):
        cal.checkpoint_calibration({"calibration": {"fitted_on": "x", "ways": 5, "by_shots": [{"temperature": 1}]}})
