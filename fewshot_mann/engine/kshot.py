"""Standard N-way K-shot accuracy for a sequence model, comparable with other few-shot methods.

Protocol (what "1-shot" and "5-shot" mean for a MANN): an episode (a trial) draws N
held-out classes and K+Q images of each (Q = ``--queries``, default 1). The N*K support
images are presented as a label-shifted sequence in shuffled order (every class exactly K
times, labels shuffled); then each of the N*Q query images is appended as the next step,
in its own copy of the sequence, so no query is ever written into the memory that answers
another. The answer is the model's prediction at the query step, i.e. after K labelled
presentations of every class. Episode i is a pure function of (seed, i); accuracy is the
mean over the episode's queries, with a 95% CI over episodes.

Baselines on the same trials (the same support and query images), fitted on each trial's
support set alone: nearest centroid and logistic regression on the plain pixels and, for a
backbone checkpoint, on the backbone's features (``engine/baselines.py``). JSON
``"baselines"``: rows like ``"results"`` plus ``"name"``.

The cross-domain protocol (CD-FSL), a contract other tools rely on::

    fewshot-mann kshot --checkpoint C --dataset folder --data-root DIR --test-classes all \
        --ways 5 --shots 1 5 --queries 15 --episodes 600 --json OUT

classes with fewer than K + Q images are skipped with a warning. ``--adapt STEPS``
meta-fine-tunes a copy of the model on each trial's support set first (``adapt.py``).
"""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import EpisodeConfig, answers_any_ways
from fewshot_mann.data.episodes import Episodes, check_bank, evaluation_episodes, label_targets, to_tensors, with_ways
from fewshot_mann.engine.evaluation import correct_steps, summarise


def support_query_episodes(bank: ClassBank, cfg: EpisodeConfig, shots: int, seed: int, start: int,
                           count: int, queries: int = 1, groups=None) -> Episodes:
    """(count * ways * queries) sequences of length ways*shots + 1: the support set, then one query.

    Rows e*ways*queries ... are episode e's support sequence followed by each of its queries,
    in order of label (then presentation).
    """
    drawn, support_steps, query_steps = support_query_steps(bank, cfg, shots, seed, start, count, queries, groups)
    steps = cfg.ways * shots
    images, labels, instance, digits, classes = [], [], [], [], []
    for e in range(count):
        support, picked = support_steps[e], query_steps[e]
        for q in picked:
            order = np.concatenate([support, [q]])
            images.append(drawn.images[e, order])
            labels.append(drawn.labels[e, order])
            instance.append(np.minimum(drawn.instance[e, order], shots))
            digits.append(drawn.label_digits[e])
            classes.append(drawn.classes[e])
    assert all(len(l) == steps + 1 for l in labels)
    return Episodes(np.stack(images), np.stack(labels), np.stack(instance), np.stack(digits), np.stack(classes))


def support_query_steps(bank: ClassBank, cfg: EpisodeConfig, shots: int, seed: int, start: int, count: int,
                        queries: int = 1, groups=None) -> tuple[Episodes, np.ndarray, np.ndarray]:
    """Trials start..start+count-1 as drawn, with each trial's support steps (count, ways*shots), in the
    order presented, and query steps (count, ways*queries), in order of label (then presentation)."""
    drawn = evaluation_episodes(bank, dataclasses.replace(cfg, instances=shots + queries), seed, start, count, groups)
    support, picked = [], []
    for e in range(count):
        support.append(np.flatnonzero(drawn.instance[e] < shots))
        q = np.flatnonzero(drawn.instance[e] >= shots)
        picked.append(q[np.lexsort((drawn.instance[e, q], drawn.labels[e, q]))])
    return drawn, np.stack(support), np.stack(picked)


def support_once_logits(model, bank: ClassBank, cfg: EpisodeConfig, shots: int, seed: int, start: int, count: int,
                        queries: int, groups, device) -> tuple[torch.Tensor, torch.Tensor, Episodes]:
    """``support_query_episodes``'s query-step logits (n, L), targets (n, G) and sequences (without images)
    for a model that reads the support once (``KeyedMemory.support_query_scores``): the same answers,
    without a copy of the support set per query."""
    drawn, sup, qry = support_query_steps(bank, cfg, shots, seed, start, count, queries, groups)
    rows = np.arange(count)[:, None]
    feats = torch.from_numpy(drawn.images).to(device=device, dtype=torch.float32)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(drawn.labels[rows, sup]).long(), cfg.ways).to(device)
    logits = model.support_query_scores(feats[rows, sup], onehot, feats[rows, qry]).flatten(0, 1)
    labels = drawn.labels[rows, qry].reshape(-1, 1)
    digits = np.repeat(drawn.label_digits, qry.shape[1], axis=0)
    targets = torch.from_numpy(label_targets(digits, labels)[:, 0])
    seq = Episodes(np.zeros((len(labels), 1), np.uint8), labels, np.full_like(labels, shots), digits,
                   np.repeat(drawn.classes, qry.shape[1], axis=0))
    return logits, targets.to(device), seq


def finetuned_bank(bank: ClassBank, finetuner, cfg: EpisodeConfig, shots: int, seed: int, index: int, queries: int,
                   groups=None, unknown: int = 0) -> ClassBank:
    """``bank`` with the rows of trial ``index`` replaced by their features after fine-tuning the backbone on
    that trial's support images (``fewshot.finetune``; the queries are only read through the tuned tail), and
    with ``unknown``, the rows of its outside-class queries too (``trust.unknown_rows``: the same draw as
    ``trust.unknown_query_scores`` makes, so those queries read the trial's tuned backbone)."""
    drawn = evaluation_episodes(bank, dataclasses.replace(cfg, instances=shots + queries), seed, index, 1, groups)
    rows, sup = drawn.image_index[0], drawn.instance[0] < shots
    read = rows[~sup]
    if unknown:
        from fewshot_mann.engine.trust import unknown_rows
        read = np.concatenate([read, unknown_rows(bank, drawn.classes[0], seed, index, unknown)])
    s_feats, q_feats = finetuner.tune(rows[sup], drawn.labels[0, sup], read, cfg.ways, seed=[seed, index])
    feats = bank.images.copy()
    feats[rows[sup]], feats[read] = s_feats, q_feats
    return ClassBank(feats, bank.offsets, bank.counts, list(bank.names))


def kshot_accuracy(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, shots: int,
                   episodes: int = 1000, seed: int = 0, batch_episodes: int | None = None, device="cpu",
                   queries: int = 1, adapt: int = 0, progress: bool = False, groups=None,
                   scores: list | None = None, finetuner=None, unknown: int = 0,
                   unknown_scores: list | None = None) -> dict:
    """N-way ``shots``-shot accuracy (mean over each episode's queries) and its 95% CI over episodes.
    ``groups``: each episode's classes from one group (``episodes.name_groups``: an alphabet).
    ``scores``: a list that gets each batch's ``trust.QueryScores`` (class scores of every query).

    ``adapt`` > 0: each episode is answered by a copy of the model meta-fine-tuned for that
    many steps on its support set (``adapt.adapt_to_support``). ``finetuner`` (``fewshot.finetune.
    Finetuner`` over the bank's images): each episode reads features of a backbone fine-tuned to its
    support set (``finetuned_bank``). With ``unknown`` > 0 and ``unknown_scores`` (a list), the class scores of
    each trial's ``unknown`` outside-class queries are appended too (``trust.unknown_query_scores``), read as the
    trial's own queries are: through its tuned backbone with ``finetuner``."""
    per_row = cfg.ways * queries
    if finetuner is not None or adapt:
        batch_episodes = 1  # one model (or one tuned backbone) per episode
    elif batch_episodes is None:  # about 1,000 sequences per forward pass
        batch_episodes = max(1, 1000 // per_row)
    model.eval()
    per_episode = []
    bar = None
    if progress and not callable(progress):  # callable: the caller's own report, progress(done, total)
        from tqdm import tqdm
        bar = tqdm(total=episodes, desc=f"{cfg.ways}-way {shots}-shot", unit="ep", leave=False, file=sys.stderr)
    for first in range(0, episodes, batch_episodes):
        count = min(batch_episodes, episodes - first)
        outside = unknown if unknown_scores is not None else 0
        read = bank if finetuner is None else finetuned_bank(bank, finetuner, cfg, shots, seed, first, queries, groups,
                                                             outside)
        if outside:
            from fewshot_mann.engine.trust import unknown_query_scores
            unknown_scores.append(unknown_query_scores(model, read, cfg, shots, count, seed, queries, unknown, groups,
                                                       device, start=first))
        if not adapt and getattr(model, "reads_support_once", False) and cfg.labels == "onehot":
            with torch.inference_mode():
                last, targets, seq = support_once_logits(model, read, cfg, shots, seed, first, count, queries,
                                                         groups, device)
            logits = last[:, None]
        else:
            logits, targets, seq = _sequence_logits(model, read, cfg, shots, seed, first, count, queries, groups,
                                                    device, adapt)
        correct = correct_steps(logits[:, -1:], targets[:, None], cfg)[:, 0]
        if scores is not None:
            from fewshot_mann.engine.trust import QueryScores
            scores.append(QueryScores.from_logits(logits[:, -1], seq, cfg.group_size))
        per_episode.append(correct.double().view(count, per_row).mean(1).cpu().numpy())
        if bar is not None:
            bar.update(count)
        if callable(progress):
            progress(first + count, episodes)
    if bar is not None:
        bar.close()
    acc = np.concatenate(per_episode)[:, None]
    mean, ci = summarise(acc)
    return {"ways": cfg.ways, "shots": shots, "accuracy": mean[0], "ci95": ci[0], "episodes": episodes,
            "queries": queries, "seed": seed, "labels": cfg.labels, **({"adapt": adapt} if adapt else {}),
            **({"finetune": dataclasses.asdict(finetuner.settings)} if finetuner else {})}


def _sequence_logits(model, read, cfg, shots, seed, first, count, queries, groups, device, adapt):
    """(logits (n, T, L), query-step targets (n, G), sequences) of ``support_query_episodes``'s sequences."""
    seq = support_query_episodes(read, cfg, shots, seed, first, count, queries, groups)
    tb = to_tensors(seq, cfg, device)
    net = model
    if adapt:
        from fewshot_mann.engine.adapt import adapt_to_support
        net = adapt_to_support(model, seq.images[0, :-1], seq.labels[0, :-1], cfg, adapt, seed=[seed, first])
    with torch.inference_mode():
        return net(tb.images, tb.label_inputs), tb.targets[:, -1], seq


def _prepare(x: np.ndarray, norm: str) -> np.ndarray:
    """(E, S, ...) -> (E, S, D) float64 vectors for a nearest-centroid baseline."""
    x = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
    if norm == "pixels":
        return x / 255.0
    if norm == "center-l2":
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def loo_accuracy(x: np.ndarray, labels: np.ndarray, norm: str = "none") -> float | None:
    """Leave-one-out nearest-centroid accuracy of a labelled set (N, ...) -> fraction, or None
    when no class has two images (nothing to leave out).

    Each image with a class-mate is scored against every class's centroid, its own class's
    taken without it: ``(sum - x) / (n - 1)``; O(N * classes * D), so it serves whole test sets."""
    v = _prepare(x[None], norm)[0].reshape(len(x), -1).astype(np.float64)
    classes, own, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), v.shape[1]))
    np.add.at(sums, own, v)
    cents = sums / counts[:, None]
    dist = (v * v).sum(1, keepdims=True) - 2 * v @ cents.T + (cents * cents).sum(1)[None]  # (N, classes)
    scored = counts[own] >= 2
    if not scored.any():
        return None
    rows = np.flatnonzero(scored)
    without = (sums[own[rows]] - v[rows]) / (counts[own[rows]] - 1)[:, None]
    dist[rows, own[rows]] = ((v[rows] - without) ** 2).sum(1)
    return float((dist[rows].argmin(1) == own[rows]).mean())


def kshot_table(model, bank: ClassBank, pixels: ClassBank, cfg, ways_list: list[int], shots_list: list[int],
                episodes: int, seed: int, queries: int = 1, adapt: int = 0, baselines: bool = True,
                device="cpu", progress: bool = True, log=print,
                within_alphabet: bool = False, unknown_queries: int = 0, calibration=None,
                finetuner=None, features: dict | None = None) -> tuple[list, list]:
    """``kshot_accuracy`` for every (ways, shots), and the nearest-centroid baselines on the
    same episodes; ``pixels``: the raw-pixel bank of the same classes (``bank`` may hold
    backbone features). Classes with fewer than shots + queries images are left out of
    that row, with a warning. Returns (rows, baseline rows); ``log`` gets a line for each.
    ``within_alphabet``: every episode's classes from one alphabet (``episodes.name_groups``).
    Each row also holds ``trust.trust_blocks`` (per_class, confusion, calibration at ``calibration``, a
    ``reporting.calibration.Calibration``; and open_set with ``unknown_queries`` outside-class queries a trial).
    ``finetuner``: a ``Finetuner`` over the images of ``bank``'s rows (see ``kshot_accuracy``).
    ``features``: ``baselines.feature_banks`` of ``bank`` where the caller has them (computed here once
    otherwise); each row's baselines read their classes, as they read ``pixels``'."""
    from fewshot_mann.data.episodes import name_groups
    from fewshot_mann.data.class_split import drop_small_classes
    from fewshot_mann.engine.baselines import feature_banks

    if baselines and features is None:
        features = feature_banks(bank, cfg.model, model)

    rows, base_rows = [], []
    for ways in ways_list:
        ep_cfg = with_ways(cfg.episodes, ways, answers_any_ways(cfg))
        for shots in shots_list:
            keep = [i for i, n in enumerate(bank.counts) if n >= shots + queries]
            if len(keep) < bank.num_classes:
                drop_small_classes(bank, shots + queries, f"{shots}-shot {queries}-query")
            kept, kept_pixels = bank.subset(keep), pixels.subset(keep)
            tuner = finetuner.subset(bank, keep) if finetuner is not None else None
            check_bank(kept, dataclasses.replace(ep_cfg, instances=shots + queries), "held-out classes")
            groups = name_groups(kept.names) if within_alphabet else None
            t0 = time.perf_counter()
            scores: list = []
            # the outside-class queries' scores, read with the trial's queries (through its tuned backbone with
            # --finetune); not with --adapt, whose adapted copies are not kept
            outside = [] if unknown_queries and not adapt and kept.num_classes > ways else None
            res = kshot_accuracy(model, kept, ep_cfg, shots, episodes, seed, device=device,
                                 queries=queries, adapt=adapt, progress=progress, groups=groups, scores=scores,
                                 finetuner=tuner, unknown=unknown_queries, unknown_scores=outside)
            if within_alphabet:
                res["within"] = "alphabet"
            res["seconds"] = round(time.perf_counter() - t0, 2)
            res["num_classes"] = kept.num_classes
            rows.append(res)
            log(f"{ways}-way {shots}-shot: {100 * res['accuracy']:.1f} ± {100 * res['ci95']:.1f} % "
                f"({cfg.model.model}{f', adapt {adapt}' if adapt else ''}"
                f"{f', fine-tuned {finetuner.settings.steps} steps' if finetuner else ''}; {episodes} episodes, "
                f"{queries} queries per class, {kept.num_classes} classes, seed {seed}"
                f"{', classes of one alphabet per episode' if within_alphabet else ''})")
            if adapt and unknown_queries:
                log("  --unknown-queries is not measured with --adapt (each trial's adapted copy is not kept)")
            res.update(_trust(kept, ep_cfg, shots, scores, 0 if adapt else unknown_queries, outside, calibration,
                              log))
            if baselines:
                banks = {"pixels": kept_pixels, **{name: b.subset(keep) for name, b in features.items()}}
                base_rows += _baseline_rows(banks, ep_cfg, shots, episodes, seed, queries, groups, log)
    return rows, base_rows


def _baseline_rows(banks: dict, cfg, shots: int, episodes: int, seed: int, queries: int, groups, log) -> list[dict]:
    """One kshot row's baselines (``baselines.kshot_baselines`` on ``banks``, the row's classes), each logged."""
    from fewshot_mann.engine.baselines import baselines_for, kshot_baselines

    out = []
    for result in kshot_baselines(banks, baselines_for(banks), cfg, shots, episodes, seed, queries, groups):
        out.append(result.row())
        log(f"  {out[-1]['name']:<38} {100 * out[-1]['accuracy']:.1f} ± {100 * out[-1]['ci95']:.1f} %")
    return out


def _trust(bank: ClassBank, cfg, shots: int, scores: list, unknown_queries: int, outside: list | None, calibration,
           log) -> dict:
    """``trust.trust_blocks`` of one kshot row, with a line for the log. ``outside``: the outside-class queries'
    scores ``kshot_accuracy`` kept (None where none were asked or the bank has no class outside a trial)."""
    from fewshot_mann.engine.trust import QueryScores, trust_blocks
    from fewshot_mann.reporting.calibration import Calibration

    if not scores:  # an accuracy function that kept no class scores (a test's stand-in): nothing to add
        return {}
    calibration = calibration or Calibration.none()
    unknown = None
    if unknown_queries:
        if bank.num_classes <= cfg.ways:
            log(f"  --unknown-queries: no class outside a {cfg.ways}-way trial among {bank.num_classes}; not measured")
        else:
            unknown = QueryScores.concat(outside)
    blocks = trust_blocks(QueryScores.concat(scores), unknown, list(bank.names), calibration, shots, cfg.ways)
    c = blocks["calibration"]
    log(f"  calibration error (ECE, 15 bins): {c['before']['ece']:.3f} at temperature 1, {c['ece']:.3f} at "
        f"temperature {c['temperature']:.3g}; answers above {c['low_confidence']['threshold']:.2f}: "
        f"{100 * c['low_confidence']['fraction_unflagged']:.0f} %, right "
        + (f"{100 * c['low_confidence']['unflagged_accuracy']:.1f} %" if c['low_confidence']['unflagged_accuracy']
           is not None else "-"))
    if "open_set" in blocks:
        o = blocks["open_set"]
        log(f"  unknown classes: AUROC {o['auroc']:.3f} ({o['known_queries']} known, {o['unknown_queries']} unknown queries)"
            + (f"; at the threshold {100 * o['unknown_called_unknown']:.0f} % of unknown and "
               f"{100 * o['known_called_unknown']:.0f} % of known called unknown" if "unknown_threshold" in o else ""))
    return blocks
