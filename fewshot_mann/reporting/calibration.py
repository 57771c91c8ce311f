"""Is a confidence of 0.8 right 8 times in 10? Calibration error, temperature, known-vs-unknown AUROC.

Pure numpy on a model's own class scores, so it serves every checkpoint:

- ``class scores`` (Q, classes): the model's logit of each candidate class at a query (for
  string labels: the sum over characters of the logits of the class's code); the class
  probabilities are ``softmax(scores / temperature)`` (temperature 1: what the model says).
- ``expected_calibration_error``: 15 equal-width bins of the top probability, the mean over
  queries of |accuracy - confidence| within each bin (Guo et al. 2017), with the bins.
- ``fit_temperature``: the temperature that minimises the negative log-likelihood of the
  right class on validation queries (1-D search on log T).
- ``auroc``: the probability that a known query scores above an unknown one (ties count
  half); the "known" score is the top class score (``known_score``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

BINS = 15


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(..., classes) probabilities of ``scores / temperature``."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict:
    """``{"ece", "bins": [{lower, upper, count, accuracy, confidence}]}`` of top-probabilities
    ``confidence`` (N,) and whether each answer was right ``correct`` (N,); empty bins are listed
    with count 0. A confidence of exactly 1 falls in the last bin."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        acc = float(correct[inside].mean()) if n else None
        conf = float(confidence[inside].mean()) if n else None
        if n:
            ece += n / len(confidence) * abs(acc - conf)
        rows.append({"lower": round(float(edges[b]), 6), "upper": round(float(edges[b + 1]), 6), "count": n,
                     "accuracy": acc, "confidence": conf})
    return {"ece": float(ece), "bins": rows}


def negative_log_likelihood(scores: np.ndarray, target: np.ndarray, temperature: float) -> float:
    z = np.asarray(scores, dtype=np.float64) / temperature
    top = z.max(-1, keepdims=True)
    logsum = np.log(np.exp(z - top).sum(-1)) + top[:, 0]
    return float((logsum - z[np.arange(len(z)), target]).mean())


def fit_temperature(scores: np.ndarray, target: np.ndarray, low: float = 1e-2, high: float = 1e2) -> float:
    """The temperature in [low, high] minimising the mean NLL of ``target`` (N,) under ``scores`` (N, classes):
    a log-spaced grid, then golden-section search around its best point (the NLL is convex in 1/T)."""
    grid = np.geomspace(low, high, 81)
    nll = [negative_log_likelihood(scores, target, t) for t in grid]
    best = int(np.argmin(nll))
    a, b = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if negative_log_likelihood(scores, target, np.exp(c)) <= negative_log_likelihood(scores, target, np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def known_score(scores: np.ndarray) -> np.ndarray:
    """(Q,) how much a query looks like one of the candidate classes: its top class score (the
    maximum logit; Hendrycks et al. 2022 found it a strong baseline for unknown-class detection)."""
    return np.asarray(scores, dtype=np.float64).max(-1)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known query's score > an unknown query's), ties half: the Mann-Whitney U / (n_known n_unknown)."""
    known, unknown = np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    if not len(known) or not len(unknown):
        raise ValueError("auroc needs known and unknown scores")
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2  # 1-based mean rank
    u = ranks[:len(known)].sum() - len(known) * (len(known) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def unknown_threshold(known: np.ndarray, keep: float = 0.95) -> float:
    """The known-score below which a query is called unknown, chosen so that a fraction ``keep``
    of the (validation) known queries stay above it."""
    return float(np.quantile(np.asarray(known, dtype=np.float64), 1.0 - keep))


def default_low_confidence(classes: int) -> float:
    """``predict``'s default low-confidence cut: halfway between chance and certainty."""
    return (1.0 + 1.0 / classes) / 2.0


def unflagged(confidence: np.ndarray, correct: np.ndarray, cut: float) -> dict:
    """The answers at or above ``cut``: their share of all answers and their accuracy (None if none)."""
    confidence, correct = np.asarray(confidence), np.asarray(correct, dtype=np.float64)
    kept = confidence >= cut
    return {"threshold": round(float(cut), 6), "fraction_unflagged": float(kept.mean()),
            "unflagged_accuracy": float(correct[kept].mean()) if kept.any() else None,
            "flagged_accuracy": float(correct[~kept].mean()) if (~kept).any() else None}


@dataclass(frozen=True)
class ShotsCalibration:
    """What was fitted at one number of support images a class (``shots``), on validation episodes."""

    shots: int
    temperature: float = 1.0
    unknown_threshold: float | None = None  # known score below this: "unknown" (None: never)
    unflagged_accuracy: float | None = None  # accuracy of the answers at or above the default low-confidence cut
    fraction_unflagged: float | None = None
    unknown_caught: float | None = None  # fraction of validation unknown queries below unknown_threshold
    auroc: float | None = None


@dataclass(frozen=True)
class Calibration:
    """A checkpoint's ``"calibration"`` record (saved as a plain dict; ``to_dict`` / ``from_dict``).
    ``fitted_on``: the validation data (e.g. "tinyimagenet validation classes, 5-way, 600 trials").
    A checkpoint without the record gets ``Calibration.none()``: temperature 1, no unknown threshold.
    ``finetuned``: the same fitted on answers with the backbone fine-tuned to each support set
    (``finetune_steps`` steps; temperatures and unflagged accuracy only, no unknown threshold: the
    validation's unknown queries are not read through a tuned backbone)."""

    fitted_on: str
    ways: int
    by_shots: tuple[ShotsCalibration, ...]
    known_kept: float = 0.95  # the unknown threshold keeps this fraction of validation known queries
    finetune_steps: int = 0  # > 0: fitted on answers fine-tuned this many steps
    finetuned: "Calibration | None" = None
    # set by for_finetune (not saved): every unknown threshold of this record was fitted on fine-tuned answers
    tuned_thresholds: bool = False

    @staticmethod
    def none() -> "Calibration":
        return Calibration("nothing (no calibration record in the checkpoint: temperature 1)", 0,
                           (ShotsCalibration(1),), 1.0)

    @property
    def fitted(self) -> bool:
        return self.ways > 0

    def for_shots(self, shots: float) -> ShotsCalibration:
        """The fit nearest ``shots`` (on a log scale: 3 is nearer 5 than 1)."""
        return min(self.by_shots, key=lambda s: (abs(np.log(s.shots) - np.log(max(shots, 1))), s.shots))

    def for_finetune(self, steps: int) -> "Calibration":
        """The record for answers fine-tuned ``steps`` steps (0: not fine-tuned): the fine-tuned record where one
        was fitted at these steps (its temperatures and unflagged accuracy, and its unknown thresholds where it
        fitted them on fine-tuned unknown queries; a record fitted before that takes each shots' threshold from
        this record), else this record (fitted without: ``finetune_steps`` 0)."""
        tuned = self.finetuned
        if not steps or tuned is None or tuned.finetune_steps != steps:
            return self
        unknown = ("unknown_threshold", "unknown_caught", "auroc")
        shots = tuple(s if s.unknown_threshold is not None else
                      dataclasses.replace(s, **{k: getattr(self.for_shots(s.shots), k) for k in unknown})
                      for s in tuned.by_shots)
        return dataclasses.replace(tuned, by_shots=shots, known_kept=self.known_kept, finetuned=None,
                                   tuned_thresholds=all(s.unknown_threshold is not None for s in tuned.by_shots))

    def to_dict(self) -> dict:
        out = {"fitted_on": self.fitted_on, "ways": self.ways, "known_kept": self.known_kept,
               "by_shots": [dataclasses.asdict(s) for s in self.by_shots]}
        if self.finetune_steps:
            out["finetune_steps"] = self.finetune_steps
        if self.finetuned is not None:
            out["finetuned"] = self.finetuned.to_dict()
        return out

    @staticmethod
    def from_dict(d: dict | None) -> "Calibration":
        if not d:
            return Calibration.none()
        return Calibration(str(d["fitted_on"]), int(d["ways"]),
                           tuple(ShotsCalibration(**s) for s in d["by_shots"]), float(d.get("known_kept", 0.95)),
                           int(d.get("finetune_steps", 0)),
                           Calibration.from_dict(d["finetuned"]) if d.get("finetuned") else None)


def checkpoint_calibration(ckpt: dict, finetune: int = 0) -> Calibration:
    """The checkpoint's record for answers fine-tuned ``finetune`` steps (``Calibration.for_finetune``), or
    ``Calibration.none()``; a damaged record is a one-line ``CheckpointError``."""
    from fewshot_mann.errors import CheckpointError

    try:
        return Calibration.from_dict(ckpt.get("calibration")).for_finetune(finetune)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's calibration record is damaged ({type(exc).__name__}: {exc}); "
                              "refit it with reports/scripts/calibrate.py") from exc
