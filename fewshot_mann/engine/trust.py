"""What a user needs to trust an answer, measured on kshot trials: calibration, per-class results, unknowns.

On the trials of ``kshot.kshot_accuracy`` (the same support and query images) this module
keeps each query's class scores (``QueryScores``), adds ``unknown`` queries per trial drawn
from classes outside it (``unknown_query_scores``: each appended to its own copy of the
trial's support sequence, like a known query), and turns them into the JSON blocks:

- ``"per_class"``: ``{class name: {"accuracy", "queries"}}`` over every trial's queries of that class;
- ``"confusion"``: ``{"classes": names, "counts": rows truth x columns answer}`` (over ``DENSE_CONFUSION``
  classes ``"nonzero"``: [truth, answer, count] of the pairs that occurred instead of ``"counts"``);
- ``"calibration"``: the temperature and what it was fitted on, expected calibration error
  (15 bins) and reliability bins before (temperature 1) and after it, and the low-confidence
  cut's unflagged share and accuracy;
- ``"open_set"`` (with unknown queries): AUROC of known vs unknown by the top class score, and
  at the checkpoint's unknown threshold the share of known and of unknown queries called unknown.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.episodes import Episodes, evaluation_episodes, to_tensors
from fewshot_mann.reporting import calibration as cal
from fewshot_mann.models.keyed import last_step_scores

_UNKNOWN_STREAM = 5  # distinct from evaluation (1), training (2), predict (3) streams
DENSE_CONFUSION = 100  # classes up to which "confusion" holds the full matrix ("counts"), else "nonzero" pairs


def class_scores(last_logits: torch.Tensor, label_digits: np.ndarray | torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, ways) the score of each episode label at the query step: the sum over label groups of the
    logit of the label's symbol. last_logits: (B, G*S); label_digits: (B, ways, G). Its softmax over
    labels is the model's output restricted to the episode's labels and renormalised."""
    b = last_logits.shape[0]
    digits = torch.as_tensor(label_digits, device=last_logits.device).long()  # (B,ways,G)
    groups = digits.shape[-1]
    logits = last_logits.reshape(b, groups, group_size).float()  # (B,G,S)
    picked = torch.gather(logits.unsqueeze(1).expand(-1, digits.shape[1], -1, -1), 3, digits.unsqueeze(-1))
    return picked.squeeze(-1).sum(-1)


@dataclass
class QueryScores:
    """Class scores of queries: scores (N, ways) by episode label; target (N,) the right label (-1:
    an unknown query); classes (N, ways) the bank class behind each label."""

    scores: np.ndarray
    target: np.ndarray
    classes: np.ndarray

    @staticmethod
    def from_logits(last_logits: torch.Tensor, seq: Episodes, group_size: int, unknown: bool = False) -> "QueryScores":
        s = class_scores(last_logits, seq.label_digits, group_size).cpu().numpy().astype(np.float64)
        target = np.full(len(s), -1, dtype=np.int64) if unknown else seq.labels[:, -1].astype(np.int64)
        return QueryScores(s, target, seq.classes.astype(np.int64))

    @staticmethod
    def concat(parts: list["QueryScores"]) -> "QueryScores":
        return QueryScores(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("scores", "target", "classes")))


def unknown_rows(bank: ClassBank, trial_classes, seed: int, index: int, unknown: int) -> np.ndarray:
    """The bank rows of trial ``index``'s ``unknown`` outside-class queries: images of classes not in
    ``trial_classes``, drawn by the generator of (seed, trial) on a stream of their own."""
    rng = np.random.default_rng([_UNKNOWN_STREAM, seed, index])
    outside = np.setdiff1d(np.arange(bank.num_classes), trial_classes)
    if not len(outside):
        raise ValueError("unknown queries need more classes than --ways")
    rows = np.concatenate([np.arange(bank.offsets[c], bank.offsets[c] + bank.counts[c]) for c in outside])
    return rng.choice(rows, unknown, replace=len(rows) < unknown)


def unknown_sequences(bank: ClassBank, cfg: EpisodeConfig, shots: int, seed: int, start: int, count: int,
                      queries: int, unknown: int, groups=None) -> Episodes:
    """(count * unknown) sequences: trial e's support set (the same draw as ``kshot.support_query_episodes``)
    followed by one image of a class outside the trial, ``unknown`` of them per trial, drawn by the
    generator of (seed, trial) on a stream of their own. The last step's label is a placeholder."""
    drawn = evaluation_episodes(bank, dataclasses.replace(cfg, instances=shots + queries), seed, start, count, groups)
    images, labels, instance, digits, classes = [], [], [], [], []
    for e in range(count):
        picked = unknown_rows(bank, drawn.classes[e], seed, start + e, unknown)
        support = np.flatnonzero(drawn.instance[e] < shots)
        for row in picked:
            images.append(np.concatenate([drawn.images[e, support], bank.images[row][None]]))
            labels.append(np.concatenate([drawn.labels[e, support], [0]]))
            instance.append(np.concatenate([drawn.instance[e, support], [shots]]))
            digits.append(drawn.label_digits[e])
            classes.append(drawn.classes[e])
    return Episodes(np.stack(images), np.stack(labels), np.stack(instance), np.stack(digits), np.stack(classes))


def unknown_query_scores(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, shots: int, episodes: int,
                         seed: int, queries: int, unknown: int, groups=None, device="cpu",
                         batch_episodes: int | None = None, start: int = 0) -> QueryScores:
    """The class scores of ``unknown`` outside-class queries per trial (see ``unknown_sequences``), for
    trials ``start`` .. ``start + episodes - 1``."""
    batch_episodes = batch_episodes or max(1, 1000 // unknown)
    model.eval()
    parts = []
    for first in range(start, start + episodes, batch_episodes):
        count = min(batch_episodes, start + episodes - first)
        seq = unknown_sequences(bank, cfg, shots, seed, first, count, queries, unknown, groups)
        tb = to_tensors(seq, cfg, device)
        with torch.inference_mode():
            last = last_step_scores(model, tb.images, tb.label_inputs)
        parts.append(QueryScores.from_logits(last, seq, cfg.group_size, unknown=True))
    return QueryScores.concat(parts)


def per_class(known: QueryScores, names: list[str]) -> tuple[dict, dict]:
    """(``"per_class"``, ``"confusion"``) of known queries, by bank class name (every class of the bank)."""
    rows = np.arange(len(known.target))
    truth = known.classes[rows, known.target]
    answer = known.classes[rows, known.scores.argmax(-1)]
    n = len(names)
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (truth, answer), 1)
    table = {}
    for c, name in enumerate(names):
        total = int(counts[c].sum())
        table[name] = {"accuracy": float(counts[c, c] / total) if total else None, "queries": total}
    confusion = {"classes": list(names), "answers": list(names), "rows": "truth", "columns": "answer"}
    if n > DENSE_CONFUSION:  # Omniglot's 659 classes: only the pairs that occurred, [truth, answer, count]
        confusion["nonzero"] = [[int(i), int(j), int(counts[i, j])] for i, j in zip(*np.nonzero(counts))]
    else:
        confusion["counts"] = counts.tolist()
    return table, confusion


def calibration_block(known: QueryScores, calibration: cal.Calibration, shots: int, ways: int) -> dict:
    """JSON ``"calibration"``: ECE and bins at temperature 1 and at the checkpoint's temperature."""
    fit = calibration.for_shots(shots)
    correct = known.scores.argmax(-1) == known.target
    before = cal.expected_calibration_error(cal.softmax(known.scores).max(-1), correct)
    probs = cal.softmax(known.scores, fit.temperature)
    after = cal.expected_calibration_error(probs.max(-1), correct)
    return {"temperature": fit.temperature, "fitted_on": calibration.fitted_on,
            "fitted_shots": fit.shots if calibration.fitted else None,
            "ece": after["ece"], "bins": after["bins"], "before": before,
            "low_confidence": cal.unflagged(probs.max(-1), correct, cal.default_low_confidence(ways))}


def open_set_block(known: QueryScores, unknown: QueryScores, calibration: cal.Calibration, shots: int) -> dict:
    """JSON ``"open_set"``: AUROC of known vs unknown queries by ``calibration.known_score``, and the
    shares called unknown at the checkpoint's threshold (if it has one)."""
    k, u = cal.known_score(known.scores), cal.known_score(unknown.scores)
    block = {"score": "top class score (max logit)", "auroc": cal.auroc(k, u), "known_queries": len(k),
             "unknown_queries": len(u)}
    threshold = calibration.for_shots(shots).unknown_threshold
    if threshold is not None:
        block.update({"unknown_threshold": threshold, "known_called_unknown": float((k < threshold).mean()),
                      "unknown_called_unknown": float((u < threshold).mean())})
    return block


def trust_blocks(known: QueryScores, unknown: QueryScores | None, names: list[str], calibration: cal.Calibration,
                 shots: int, ways: int) -> dict:
    """Every block for a kshot row: per_class, confusion, calibration and (with unknowns) open_set."""
    table, confusion = per_class(known, names)
    out = {"per_class": table, "confusion": confusion, "calibration": calibration_block(known, calibration, shots, ways)}
    if unknown is not None:
        out["open_set"] = open_set_block(known, unknown, calibration, shots)
    return out


@torch.inference_mode()
def evaluation_scores(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, episodes: int, seed: int,
                      batch_size: int = 250, device="cpu", from_instance: int = 2) -> QueryScores:
    """Class scores of every step of ``evaluate``'s episodes (the same draw: episode i from (seed, i)) that
    shows a class for the ``from_instance``-th time or later (the model has been told its label), scored
    over the episode's labels."""
    was_training = model.training
    model.eval()
    parts = []
    try:
        for first in range(0, episodes, batch_size):
            count = min(batch_size, episodes - first)
            drawn = evaluation_episodes(bank, cfg, seed, first, count)
            tb = to_tensors(drawn, cfg, device)
            logits = model(tb.images, tb.label_inputs)  # (B,T,G*S)
            rows, cols = np.nonzero(drawn.instance >= from_instance - 1)
            s = class_scores(logits[torch.from_numpy(rows), torch.from_numpy(cols)], drawn.label_digits[rows], cfg.group_size)
            parts.append(QueryScores(s.cpu().numpy().astype(np.float64), drawn.labels[rows, cols].astype(np.int64),
                                     drawn.classes[rows].astype(np.int64)))
    finally:
        model.train(was_training)
    return QueryScores.concat(parts)
