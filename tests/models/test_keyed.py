"""The label-keyed memory's logistic write (``--keyed-write logistic``) against literal references:
scikit-learn's LogisticRegression for which written label, the mean write's read for whether the label
is new."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot_mann.config import Config
from fewshot_mann.errors import UserError
from fewshot_mann.models.keyed import KeyedMemory

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def keyed_config(write: str, width: int = 12) -> Config:
    cfg = Config()
    cfg.model.model, cfg.model.encoder, cfg.model.feature_dim, cfg.model.feature_norm = "keyed", "timm:x", width, "l2"
    cfg.model.keyed_write = write
    return cfg


def keyed(write: str, width: int = 12, read_power: float = 1.0) -> KeyedMemory:
    cfg = keyed_config(write, width)
    cfg.model.read_power = read_power
    return KeyedMemory(cfg).eval()


def without_fast_path(model: torch.nn.Module) -> torch.nn.Module:
    """The same model seen through ``forward`` alone (no ``reads_support_once``): the sequences' answers."""
    plain = torch.nn.Sequential()
    plain.forward = model.forward
    return plain


def clustered(rng, classes: int, per: int, width: int = 12) -> np.ndarray:
    return (rng.normal(size=(classes, per, width)) + 2 * rng.normal(size=(classes, 1, width))).astype(np.float32)


def notebook(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, num_labels: int,
             class_weight: str | None = None) -> np.ndarray:
    """What a notebook fits: unit-length features, ``LogisticRegression()`` (C=1), log-probabilities per label."""
    def unit(x):
        return x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    out = np.full((len(queries), num_labels), -np.inf)
    told = np.unique(labels)
    if len(told) == 1:
        out[:, told[0]] = 0.0
        return out
    fit = sklearn_linear.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000, class_weight=class_weight)
    fit.fit(unit(support), labels)
    out[:, fit.classes_] = fit.predict_log_proba(unit(queries))
    return out


def test_logistic_write_answers_what_a_notebook_fits():
    """Every label written (kshot's, predict's trials): the read's probabilities are scikit-learn's logistic
    regression's on the unit-length features."""
    rng = np.random.default_rng(0)
    model = keyed("logistic")
    for ways, shots in ((5, 1), (5, 3), (7, 2)):
        x = clustered(rng, ways, shots + 4)
        support, queries = x[:, :shots].reshape(-1, 12), x[:, shots:].reshape(-1, 12)
        labels = np.repeat(np.arange(ways), shots)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), ways).float()
        with torch.inference_mode():
            got = model.support_query_scores(torch.from_numpy(support)[None], onehot[None], torch.from_numpy(queries)[None])[0]
        want = notebook(support, labels, queries, ways)
        np.testing.assert_allclose(torch.log_softmax(got.double(), -1).numpy(), want, atol=2e-4)


def test_logistic_write_asks_the_centroid_read_whether_a_label_is_new():
    """In a label-shifted sequence: P(a label not yet written) is the mean write's, and the written labels share
    the rest in the proportions of scikit-learn's logistic regression fitted on the steps told so far, with
    ``class_weight="balanced"`` (the sequence tells its labels unevenly)."""
    rng = np.random.default_rng(1)
    ways, steps = 4, 14
    x = clustered(rng, ways, 4).reshape(-1, 12)
    order = rng.permutation(len(x))[:steps]
    images, labels = torch.from_numpy(x[order])[None], np.repeat(np.arange(ways), 4)[order]
    label_inputs = torch.zeros(1, steps, ways)
    label_inputs[0, 1:] = torch.nn.functional.one_hot(torch.from_numpy(labels[:-1]), ways).float()
    logistic, mean = keyed("logistic"), keyed("mean")
    with torch.no_grad():
        mean.unseen.fill_(2.0), logistic.unseen.fill_(2.0)  # both ask "new?" the same way
        scores, centroid_scores = logistic(images, label_inputs)[0].double(), mean(images, label_inputs)[0].double()
        got = torch.softmax(scores, -1).numpy()
        centroid = torch.softmax(centroid_scores, -1).numpy()
    # the top score (what an unknown threshold reads) is the centroid read's, whatever the probabilities
    torch.testing.assert_close(scores.amax(-1), centroid_scores.amax(-1))
    asked_new = 0
    for t in range(steps):
        written = np.isin(np.arange(ways), labels[:t])
        assert got[t].sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(got[t][~written], centroid[t][~written], atol=1e-6)
        if written.any():
            share = np.exp(notebook(x[order][:t], labels[:t], x[order][t:t + 1], ways, "balanced")[0][written])
            np.testing.assert_allclose(got[t][written], centroid[t][written].sum() * share, atol=2e-4)
        asked_new += int(0 < written.sum() < ways and got[t][~written].sum() > 0.5)
    assert asked_new > 0  # the "new label" answer happened, not only the written labels' shares


def test_an_uneven_support_is_fitted_with_balanced_class_weights():
    """``LogisticRegression(balanced=True)`` on supports of uneven counts (as predict's folders are) answers what
    scikit-learn's ``class_weight="balanced"`` does; an even support is the plain fit."""
    from fewshot_mann.fewshot.logistic import LogisticRegression
    rng = np.random.default_rng(2)
    x = clustered(rng, 3, 9)
    support = np.concatenate([x[0, :1], x[1, :3], x[2, :6]])
    labels = np.array([0] + [1] * 3 + [2] * 6)
    queries = x[:, 6:].reshape(-1, 12)
    def unit(a):
        return torch.nn.functional.normalize(torch.from_numpy(a).double(), dim=-1)[None]
    got = LogisticRegression(balanced=True).fit(unit(support), torch.from_numpy(labels)[None], 3).scores(unit(queries))[0]
    np.testing.assert_allclose(got.numpy(), notebook(support, labels, queries, 3, "balanced"), atol=2e-4)
    plain = LogisticRegression().fit(unit(support), torch.from_numpy(labels)[None], 3).scores(unit(queries))[0]
    assert (plain - got).abs().max() > 1e-2  # the weights changed the fit
    even = unit(x[:, :4].reshape(-1, 12)), torch.arange(3).repeat_interleave(4)[None]
    torch.testing.assert_close(LogisticRegression(balanced=True).fit(*even, 3).scores(unit(queries)),
                               LogisticRegression().fit(*even, 3).scores(unit(queries)))


def test_logistic_write_refuses_meta_training():
    cfg = Config()
    cfg.model.model, cfg.model.keyed_write, cfg.train.episodes = "keyed", "logistic", 10
    with pytest.raises(UserError, match="nothing to meta-train"):
        cfg.validate()
    cfg.train.episodes = 0
    cfg.validate()


def test_read_power_reads_cosine_to_the_mean_of_power_transformed_features():
    """``--read-power p``: the mean write's read is sharpness x cosine of sign(z)|z|^p (z the unit features, the
    result unit length again) to each label's mean of the same, a literal numpy reference; 1 is the plain read."""
    rng = np.random.default_rng(5)
    ways, shots = 5, 3
    x = np.abs(clustered(rng, ways, shots + 2))  # ReLU-like features, as a backbone's head gives
    support, queries = x[:, :shots].reshape(-1, 12), x[:, shots:].reshape(-1, 12)
    onehot = torch.nn.functional.one_hot(torch.arange(ways).repeat_interleave(shots), ways).float()

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    for power in (1.0, 0.3):
        model = keyed("mean", read_power=power)
        with torch.inference_mode():
            got = model.support_query_scores(torch.from_numpy(support)[None], onehot[None],
                                             torch.from_numpy(queries)[None])[0].double().numpy()
        ps, pq = (unit(unit(a.astype(np.float64)) ** power) for a in (support, queries))
        centroids = unit(ps.reshape(ways, shots, 12).mean(1))
        np.testing.assert_allclose(got, np.exp(2.3) * pq @ centroids.T, rtol=1e-4)
    plain = keyed("mean").support_query_scores(torch.from_numpy(support)[None], onehot[None], torch.from_numpy(queries)[None])
    assert not np.allclose(plain[0].detach().double().numpy(), got, atol=1e-3)  # the power changed the read


def test_read_power_moves_the_logistic_writes_top_score_not_its_answers():
    """With the logistic write the power transform changes only the top score (the unknown score: the powered
    centroid read's top), never the probabilities."""
    rng = np.random.default_rng(6)
    x = np.abs(clustered(rng, 4, 5))
    support, queries = x[:, :2].reshape(-1, 12), x[:, 2:].reshape(-1, 12)
    onehot = torch.nn.functional.one_hot(torch.arange(4).repeat_interleave(2), 4).float()
    args = torch.from_numpy(support)[None], onehot[None], torch.from_numpy(queries)[None]
    with torch.inference_mode():
        plain, powered = keyed("logistic").support_query_scores(*args), keyed("logistic", read_power=0.2).support_query_scores(*args)
        centroid = keyed("mean", read_power=0.2).support_query_scores(*args)
    torch.testing.assert_close(torch.softmax(powered, -1), torch.softmax(plain, -1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(powered.amax(-1), centroid.amax(-1))
    assert (powered.amax(-1) - plain.amax(-1)).abs().max() > 1e-2


@pytest.mark.parametrize("write,read_power", [("mean", 1.0), ("logistic", 1.0), ("mean", 0.3), ("logistic", 0.3)])
def test_last_step_scores_read_the_support_once_and_answer_as_the_sequence(write, read_power):
    """predict's and the unknown queries' last-step answers: the support-once read equals the sequence's last
    step, for either write and a centred encoder; a model without the fast path is simply run."""
    from fewshot_mann.models.keyed import last_step_scores
    rng = np.random.default_rng(3)
    ways, steps = 4, 11
    x = torch.from_numpy(clustered(rng, ways, 3).reshape(-1, 12)[rng.permutation(12)[:steps]])[None].repeat(2, 1, 1)
    label_inputs = torch.zeros(2, steps, ways)
    label_inputs[:, 1:] = torch.nn.functional.one_hot(torch.randint(0, ways, (2, steps - 1)), ways).float()
    model = keyed(write, read_power=read_power)
    model.encoder.norm, model.encoder.per_image = "center-l2", False
    with torch.no_grad():
        model.unseen.fill_(2.0)
        fast = last_step_scores(model, x, label_inputs)
        torch.testing.assert_close(fast, model(x, label_inputs)[:, -1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(last_step_scores(without_fast_path(model), x, label_inputs),
                                   model(x, label_inputs)[:, -1])


@pytest.mark.parametrize("write", ["mean", "logistic"])
def test_predict_writes_each_orders_support_once_and_answers_as_its_sequences(write):
    """predict over a keyed memory fits each order's support once and reads every query against it: the same
    class scores as appending each query to its own copy of the order's support sequence."""
    from fewshot_mann.data.bank import FeatureBank
    from fewshot_mann.engine.predict import predict_scores
    rng = np.random.default_rng(4)
    ways = 6
    feats = clustered(rng, ways, 4).reshape(-1, 12)
    support = FeatureBank(feats, np.arange(ways) * 4, np.full(ways, 4), [f"c{i}" for i in range(ways)])
    queries = clustered(rng, ways, 2).reshape(-1, 12)
    cfg = keyed_config(write)
    cfg.episodes.ways, cfg.episodes.instances = ways, 5
    model = KeyedMemory(cfg).eval()
    with torch.no_grad():
        model.unseen.fill_(2.0)
    fast = predict_scores(model, cfg, support, queries, orders=3, seed=1, batch_size=5)
    slow = predict_scores(without_fast_path(model), cfg, support, queries, orders=3, seed=1, batch_size=5)
    assert fast.shape == (3, len(queries), ways)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)



def test_predict_writes_each_orders_support_once_however_many_queries(monkeypatch):
    """``predict_scores`` with a read-once model: one support fit (``support_query_scores`` call) per label
    order even past a batch of queries (the logistic write's fit is the costly part), and the same scores as
    reading the queries one batch at a time."""
    from fewshot_mann.data.bank import ClassBank
    from fewshot_mann.engine.predict import predict_scores

    rng = np.random.default_rng(2)
    cfg = keyed_config("logistic")
    cfg.episodes.ways = 3
    model = KeyedMemory(cfg).eval()
    x = clustered(rng, 3, 3)
    support = ClassBank.from_groups([x[c] for c in range(3)], ["a", "b", "c"])
    queries = rng.normal(size=(7, 12)).astype(np.float32)
    calls = []
    fit = model.support_query_scores
    monkeypatch.setattr(model, "support_query_scores", lambda *a: calls.append(a[2].shape[1]) or fit(*a))
    with torch.inference_mode():
        scores = predict_scores(model, cfg, support, queries, orders=2, batch_size=3)
    assert calls == [7, 7]  # one fit an order, all 7 queries read against it
    with torch.inference_mode():
        one_by_one = [predict_scores(model, cfg, support, queries[i:i + 1], orders=2) for i in range(7)]
    np.testing.assert_allclose(scores, np.concatenate(one_by_one, axis=1), atol=1e-5)


def test_a_checkpoint_may_leave_out_an_untrained_residual_but_not_a_trained_models_weights():
    """The bundled photos model ships without its all-zero residual map; it loads as zeros and answers the same.
    Any other missing tensor (here the MANN's) is still refused in one line."""
    from fewshot_mann.engine.checkpoint import check_weights_fit
    from fewshot_mann.errors import CheckpointError
    from fewshot_mann.models.registry import build_model

    cfg = keyed_config("logistic")
    full = keyed("logistic")
    state = {k: v for k, v in full.state_dict().items() if k != "residual.weight"}
    check_weights_fit(cfg, state, "photos.pt")  # allowed
    loaded = KeyedMemory(cfg).eval()
    with torch.no_grad():
        loaded.residual.weight.fill_(1.0)  # what it was before loading must not survive
    loaded.load_state_dict(state)
    assert not loaded.residual.weight.any()
    x = torch.randn(2, 6, 12)
    labels = torch.nn.functional.one_hot(torch.tensor([[0, 1, 0, 1, 0, 1]] * 2), 5).float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, labels), full(x, labels))
    mann_cfg = Config()
    mann = build_model(mann_cfg).state_dict()
    dropped = next(iter(mann))
    with pytest.raises(CheckpointError, match=f"missing {dropped}"):
        check_weights_fit(mann_cfg, {k: v for k, v in mann.items() if k != dropped}, "m.pt")
