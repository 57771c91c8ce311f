"""The batched few-shot heads against their literal definitions: scikit-learn's LogisticRegression and
nearest centroid written out per trial."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fewshot_mann.fewshot import centroid_scores, fit_logistic, logistic_scores


@pytest.mark.parametrize("dim,scale", [(8, 1.0), (300, 0.2), (64, 3.0)])
def test_logistic_regression_matches_scikit_learn(dim, scale):
    rng = np.random.default_rng(dim)
    e, ways, shots, q = 4, 3, 4, 6
    xs = rng.normal(size=(e, ways * shots, dim)) * scale
    xq = rng.normal(size=(e, q, dim)) * scale
    ys = np.tile(np.repeat(np.arange(ways), shots), (e, 1))
    ours = logistic_scores(torch.tensor(xs), torch.tensor(ys), torch.tensor(xq), ways).exp().numpy()
    for i in range(e):
        ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(xs[i], ys[i]).predict_proba(xq[i])
        np.testing.assert_allclose(ours[i], ref, atol=2e-4)


def test_many_way_problems_are_solved_in_a_batch_on_two_threads():
    """10-way 3-shot (a Newton system of 310 unknowns), several trials at once, on two threads: torch 2.14's batched
    CPU solve fails or hangs at this size, so the solver takes them one at a time (``logistic._solve``); the answers
    are scikit-learn's."""
    rng = np.random.default_rng(7)
    e, ways, shots, q, dim = 3, 10, 3, 2, 16
    centres = rng.normal(size=(e, ways, 1, dim))
    xs = (centres + 0.7 * rng.normal(size=(e, ways, shots, dim))).reshape(e, ways * shots, dim)
    xq = (centres + 0.7 * rng.normal(size=(e, ways, q, dim))).reshape(e, ways * q, dim)
    ys = np.tile(np.repeat(np.arange(ways), shots), (e, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = logistic_scores(torch.tensor(xs), torch.tensor(ys), torch.tensor(xq), ways).exp().numpy()
    finally:
        torch.set_num_threads(threads)
    for i in range(e):
        ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(xs[i], ys[i]).predict_proba(xq[i])
        np.testing.assert_allclose(ours[i], ref, atol=2e-4)


def test_logistic_regression_weights_leave_points_out_and_absent_labels_never_win():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 5))
    y = np.array([[0, 1, 2, 0, 1, 2]])
    w = np.array([[1, 1, 0, 1, 1, 0]], float)  # label 2 never given
    gram = torch.tensor(x @ x.transpose(0, 2, 1))
    a, b, present = fit_logistic(gram, torch.tensor(y), torch.tensor(w), 3)
    assert present.tolist() == [[True, True, False]]
    assert torch.all(a[0, [2, 5]] == 0)  # points outside the support never enter the solution
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(x[0, [0, 1, 3, 4]], y[0, [0, 1, 3, 4]])
    logits = (gram[0] @ a[0] + b[0])[:, :2]
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), ref.predict_proba(x[0]), atol=2e-4)


def test_nearest_centroid_is_the_distance_to_each_class_mean():
    rng = np.random.default_rng(1)
    xs, xq = rng.normal(size=(3, 8, 7)), rng.normal(size=(3, 5, 7))
    ys = rng.integers(0, 3, (3, 8))
    ys[:, :3] = [0, 1, 2]
    got = centroid_scores(torch.tensor(xs), torch.tensor(ys), torch.tensor(xq), 4).numpy()
    for e in range(3):
        for label in range(3):
            c = xs[e, ys[e] == label].mean(0)
            np.testing.assert_allclose(got[e, :, label], -((xq[e] - c) ** 2).sum(-1), rtol=1e-10)
        assert np.all(got[e, :, 3] < -1e29)  # label 3 has no support image


def test_the_baselines_logistic_regression_reaches_scikit_learns_optimum_on_plain_pixels():
    """The raw-pixel baseline's problem: 5-way 5-shot, 3,072 values in [0, 1] an image (32 x 32 RGB), whose
    large Gram entries made the first (gradient) solver stop far from the optimum at the baselines' settings
    (probabilities off by up to 0.9, accuracy 2 points low on eurosat); the baseline must be sklearn's."""
    from fewshot_mann.engine.baselines import classifier
    rng = np.random.default_rng(7)
    ways, shots, q, dim = 5, 5, 10, 3072
    prototypes = rng.uniform(0.2, 0.8, size=(ways, dim))
    ys, yq = np.repeat(np.arange(ways), shots), np.repeat(np.arange(ways), q)
    xs = np.clip(prototypes[ys] + rng.normal(0, 0.25, size=(ways * shots, dim)), 0, 1)
    xq = np.clip(prototypes[yq] + rng.normal(0, 0.25, size=(ways * q, dim)), 0, 1)
    ours = classifier("logistic").fit(torch.tensor(xs)[None], torch.tensor(ys)[None], ways).scores(torch.tensor(xq)[None])
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(xs, ys).predict_proba(xq)
    np.testing.assert_allclose(ours.exp()[0].numpy(), ref, atol=2e-4)


def test_a_warm_start_reaches_the_same_optimum_as_a_cold_one():
    """``fit_logistic(start=...)`` (prefix fits start from the previous step's optimum) changes the path,
    not the answer: from the optimum of one point fewer, and from an arbitrary point, the fit is the cold fit's."""
    rng = np.random.default_rng(3)
    p, s, ways, dim = 5, 9, 3, 12
    x = torch.tensor(rng.normal(size=(p, s, dim)))
    y = torch.tensor(rng.integers(0, ways, size=(p, s)))
    w = torch.ones(p, s, dtype=torch.float64)
    gram = x @ x.transpose(1, 2)
    a, b, _ = fit_logistic(gram, y, w, ways)
    cold = gram @ a + b.unsqueeze(1)
    fewer, fewer_b, _ = fit_logistic(gram[:, :-1, :-1].contiguous(), y[:, :-1], w[:, :-1], ways)
    starts = [(torch.nn.functional.pad(fewer, (0, 0, 0, 1)), fewer_b),
              (torch.tensor(rng.normal(size=(p, s, ways))), torch.tensor(rng.normal(size=(p, ways))))]
    for start in starts:
        a2, b2, _ = fit_logistic(gram, y, w, ways, start=start)
        warm = gram @ a2 + b2.unsqueeze(1)
        torch.testing.assert_close(warm.log_softmax(-1), cold.log_softmax(-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("direct_max", [0, 10 ** 6])
def test_both_newton_solvers_reach_scikit_learns_optimum(direct_max, monkeypatch):
    """The Newton step by the formed system (small problems) and by conjugate gradients (large ones,
    ``DIRECT_SOLVE_MAX``), each forced on the same problems: balanced weights, a label absent from one
    support, two labels in another (the binomial model), all answered as scikit-learn."""
    from fewshot_mann.fewshot import logistic
    monkeypatch.setattr(logistic, "DIRECT_SOLVE_MAX", direct_max)
    rng = np.random.default_rng(11)
    ways, dim = 4, 30
    ys = np.array([[0, 0, 1, 1, 2, 2, 3, 3, 0, 1], [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], [0, 1, 0, 1, 0, 1, 1, 1, 0, 1]])
    xs = rng.normal(size=(3, 10, dim)) + 1.5 * rng.normal(size=(3, ways, dim))[np.arange(3)[:, None], ys]
    xq = rng.normal(size=(3, 5, dim))
    ours = logistic.LogisticRegression(balanced=True).fit(torch.tensor(xs), torch.tensor(ys), ways).scores(
        torch.tensor(xq)).exp().numpy()
    for i in range(3):
        ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000, class_weight="balanced").fit(xs[i], ys[i])
        np.testing.assert_allclose(ours[i][:, ref.classes_], ref.predict_proba(xq[i]), atol=2e-4)
        assert np.all(ours[i][:, sorted(set(range(ways)) - set(ref.classes_))] == 0)
