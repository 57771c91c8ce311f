"""What ``predict`` adds so that an answer can be acted on: the checkpoint's calibration, "unknown",
a summary line, and per-class results when the queries' truth is known.

- ``calibrated``: class scores (orders, queries, classes) -> probabilities at the temperature fitted
  for the support's shots (``support_shots``), each query's known score (its class scores averaged
  over orders, the top one) and the unknown threshold (None: the checkpoint has none);
- ``query_truth``: a ``--query`` folder whose sub-folders are named like support classes gives each
  image under them its truth (any other sub-folder: a class outside the support set, truth "unknown");
- ``summary``: the counts a user reads first; ``per_class`` / ``confusion`` as ``kshot`` writes them, plus
  the column "unknown" for queries called unknown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.reporting import calibration as cal

UNKNOWN = "unknown"


def support_shots(bank: ClassBank, cap: int) -> int:
    """The support's images a class as the model uses them (the median over classes, at most ``cap``)."""
    return int(np.median(np.minimum(bank.counts, cap)))


def calibrated(scores: np.ndarray, calibration: cal.Calibration | None, bank: ClassBank, cap: int):
    """(probabilities (orders, Q, classes), known score (Q,), unknown threshold or None)."""
    fit = (calibration or cal.Calibration.none()).for_shots(support_shots(bank, cap))
    return cal.softmax(scores, fit.temperature), cal.known_score(scores.mean(0)), fit.unknown_threshold


def query_truth(query_paths: list[str], results: list[dict], names: list[str]) -> list[str] | None:
    """Each result's true class, from the sub-folder of a ``--query`` folder it lies in, or None when
    no query lies in a sub-folder named like a support class (the truth is not known)."""
    roots = [Path(p).expanduser() for p in query_paths if Path(p).expanduser().is_dir()]
    truth = []
    for r in results:
        path = Path(r["query"])
        folder = None
        for root in roots:
            try:
                parts = path.relative_to(root).parts
            except ValueError:
                continue
            if len(parts) >= 2:
                folder = parts[0]
                break
        truth.append(folder)
    if not any(t in names for t in truth) or any(t is None for t in truth):
        return None
    return [t if t in names else UNKNOWN for t in truth]


def answer(r: dict) -> str:
    return UNKNOWN if r.get("unknown") else r["prediction"]


def summary(results: list[dict], names: list[str]) -> dict:
    """Queries, answers by class, low-confidence and unknown counts."""
    answered = [r for r in results if not r.get("unknown")]
    return {"queries": len(results), "by_class": {n: sum(r["prediction"] == n for r in answered) for n in names},
            "low_confidence": sum(bool(r["low_confidence"]) for r in results),
            "unknown": sum(bool(r.get("unknown")) for r in results) if any(r.get("unknown") is not None
                                                                          for r in results) else None}


def summary_line(s: dict) -> str:
    by_class = ", ".join(f"{n} {c}" for n, c in s["by_class"].items())
    unknown = "no unknown threshold in this checkpoint" if s["unknown"] is None else f"{s['unknown']} unknown"
    return f"{s['queries']} queries: {by_class}; {s['low_confidence']} low confidence; {unknown}"


def per_class(results: list[dict], truth: list[str], names: list[str]) -> tuple[dict, dict]:
    """(``"per_class"``, ``"confusion"``): rows the truth (support classes, then "unknown" when some query's
    class is outside the support), columns the answer (support classes, then "unknown")."""
    rows = list(names) + ([UNKNOWN] if UNKNOWN in truth else [])
    cols = list(names) + [UNKNOWN]
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for r, t in zip(results, truth):
        counts[rows.index(t), cols.index(answer(r))] += 1
    table = {}
    for i, name in enumerate(rows):
        total = int(counts[i].sum())
        table[name] = {"accuracy": float(counts[i, cols.index(name)] / total) if total else None, "queries": total}
    return table, {"classes": rows, "answers": cols, "counts": counts.tolist(), "rows": "truth", "columns": "answer"}


def format_per_class(table: dict) -> str:
    return "per class (right / queries): " + ", ".join(
        f"{n} {round(v['accuracy'] * v['queries'])}/{v['queries']}" for n, v in table.items() if v["queries"])


def calibration_notes(calibration, fit, finetune: int = 0) -> list[str]:
    """What ``predict`` prints of the checkpoint's calibration record ``calibration`` (``fit``: its entry for
    this support set's shots): where it was fitted, what its flags (the default low-confidence cut,
    ``calibration.default_low_confidence``) were worth there, and, when the backbone was fine-tuned (``finetune`` steps),
    what of it was fitted on fine-tuned answers."""
    if not calibration.fitted:
        return ["calibration: none in this checkpoint (temperature 1): the confidences are the model's own, "
                "not measured frequencies; no unknown threshold"]
    # the threshold came from the frozen record though the temperature is the fine-tuned answers'
    frozen_threshold = finetuned_checked(calibration, finetune) and not threshold_checked(calibration, finetune)
    lines = [f"calibration: temperature {fit.temperature:.3g} ({fit.shots}-shot), fitted on {calibration.fitted_on}"]
    if fit.unflagged_accuracy is not None:
        lines.append(f"  there ({calibration.ways}-way {fit.shots}-shot), answers at or above "
                     f"{cal.default_low_confidence(calibration.ways):.2f} were {100 * fit.fraction_unflagged:.0f} % of all "
                     f"and right {100 * fit.unflagged_accuracy:.0f} % of the time")
    if fit.unknown_caught is not None:
        where = "on the frozen answers' trials" if frozen_threshold else "there"
        lines.append(f"  {where}, the unknown threshold called {100 - 100 * calibration.known_kept:.0f} % of known "
                     f"queries unknown and caught {100 * fit.unknown_caught:.0f} % of queries from other classes")
    if finetune:
        lines.append("  " + finetune_calibration_note(calibration, finetune))
    return lines


def finetuned_checked(calibration, finetune: int) -> bool:
    """Whether ``calibration``'s temperature was fitted on answers fine-tuned ``finetune`` steps."""
    return bool(finetune) and calibration.fitted and calibration.finetune_steps == finetune


def threshold_checked(calibration, finetune: int) -> bool:
    """Whether ``calibration``'s unknown threshold was fitted on answers fine-tuned ``finetune`` steps too: the
    fine-tuned record read outside-class queries through the tuned backbones (records fitted before that take
    the frozen threshold: ``Calibration.for_finetune`` says which, ``tuned_thresholds``)."""
    return finetuned_checked(calibration, finetune) and calibration.tuned_thresholds


def finetune_calibration_note(calibration, steps: int) -> str:
    """The one sentence ``predict`` and the web app add when answers fine-tuned ``steps`` steps meet the calibration
    record ``calibration``: whether its temperature (``finetuned_checked``) and its unknown threshold
    (``threshold_checked``) were fitted on such answers."""
    checked, threshold = finetuned_checked(calibration, steps), threshold_checked(calibration, steps)
    if checked and threshold:
        return f"temperature and unknown threshold fitted on answers fine-tuned {steps} steps"
    if checked:
        return (f"temperature fitted on answers fine-tuned {steps} steps; the unknown threshold was fitted without "
                "fine-tuning and is applied unchecked")
    return (f"fitted without fine-tuning: after --finetune {steps} the temperature and the unknown threshold are "
            "applied unchecked, so read these confidences and flags as uncalibrated")
