"""Fit a checkpoint's ``"calibration"`` record on validation episodes (``reports/scripts/calibrate.py``).

For each number of shots, on kshot trials of one or more validation banks (pooled; each bank's
trials drawn as in ``kshot``, from ``seed``, which should differ from the seed results are
reported with), from the model's own class scores:

- the temperature minimising the negative log-likelihood of the right class;
- the share and the accuracy of the answers at or above predict's default low-confidence cut
  ((1 + 1/ways) / 2) at that temperature: what an unflagged answer is worth;
- the unknown threshold on the top class score that keeps ``known_kept`` of the known queries,
  and the share of outside-class queries (``unknown`` per trial) it calls unknown, with the AUROC.

Nothing is fitted on queries of the trials a result is reported on unless the same bank and seed
are given; say what it was fitted on in ``fitted_on`` (saved in the record).
"""
from __future__ import annotations

import dataclasses

import torch

from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.episodes import check_bank
from fewshot_mann.engine.kshot import kshot_accuracy
from fewshot_mann.engine.trust import QueryScores
from fewshot_mann.reporting import calibration as cal


def validation_scores(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, shots: int, episodes: int, seed: int,
                      queries: int, unknown: int, device="cpu", finetuner=None) -> tuple[QueryScores, QueryScores | None]:
    """(known, unknown) query scores of ``episodes`` kshot trials of ``bank`` (classes with fewer than
    shots + queries images left out; no unknown queries when the bank has no class outside a trial). With
    ``finetuner`` each trial, its outside-class queries included, is answered by the backbone fine-tuned to its
    support set, as ``kshot --finetune``."""
    keep = [i for i, n in enumerate(bank.counts) if n >= shots + queries]
    if finetuner is not None:
        finetuner = finetuner.subset(bank, keep)
    bank = bank.subset(keep)
    check_bank(bank, dataclasses.replace(cfg, instances=shots + queries), "validation classes")
    scores: list = []
    outside: list | None = [] if unknown and bank.num_classes > cfg.ways else None
    kshot_accuracy(model, bank, cfg, shots, episodes, seed, device=device, queries=queries, scores=scores,
                   finetuner=finetuner, unknown=unknown, unknown_scores=outside)
    return QueryScores.concat(scores), QueryScores.concat(outside) if outside else None


def fit_shots(shots: int, known: QueryScores, unknown: QueryScores | None, ways: int,
              known_kept: float = 0.95) -> cal.ShotsCalibration:
    """One ``ShotsCalibration`` from validation query scores (see the module docstring)."""
    temperature = cal.fit_temperature(known.scores, known.target)
    probs = cal.softmax(known.scores, temperature)
    correct = probs.argmax(-1) == known.target
    kept = cal.unflagged(probs.max(-1), correct, cal.default_low_confidence(ways))
    threshold = caught = area = None
    if unknown is not None:
        k, u = cal.known_score(known.scores), cal.known_score(unknown.scores)
        threshold = cal.unknown_threshold(k, known_kept)
        caught, area = float((u < threshold).mean()), cal.auroc(k, u)
    return cal.ShotsCalibration(shots, temperature, threshold, kept["unflagged_accuracy"], kept["fraction_unflagged"],
                                caught, area)


def fit_calibration(model: torch.nn.Module, banks: dict[str, ClassBank], cfg: EpisodeConfig, shots_list: list[int],
                    episodes: int, seed: int, queries: int, unknown: int, known_kept: float = 0.95,
                    device="cpu", log=print, finetuners: dict | None = None) -> cal.Calibration:
    """A ``Calibration`` fitted on ``banks`` ({name: bank}, pooled) at ``cfg.ways`` ways, per shots.
    ``finetuners`` ({name: ``Finetuner`` over that bank's images}): fitted on fine-tuned answers instead
    (``finetune_steps`` set), the unknown threshold too."""
    fits = []
    for shots in shots_list:
        known, outside = [], []
        for name, bank in banks.items():
            k, u = validation_scores(model, bank, cfg, shots, episodes, seed, queries, unknown, device,
                                     finetuner=(finetuners or {}).get(name))
            known.append(k)
            if u is not None:
                outside.append(u)
        fit = fit_shots(shots, QueryScores.concat(known), QueryScores.concat(outside) if outside else None, cfg.ways,
                        known_kept)
        fits.append(fit)
        log(f"{cfg.ways}-way {shots}-shot: temperature {fit.temperature:.4g}; unflagged "
            f"{100 * (fit.fraction_unflagged or 0):.0f} % of answers, right "
            + (f"{100 * fit.unflagged_accuracy:.1f} %" if fit.unflagged_accuracy is not None else "-")
            + (f"; unknown threshold {fit.unknown_threshold:.4g} (keeps {100 * known_kept:.0f} % of known, calls "
               f"{100 * fit.unknown_caught:.0f} % of unknown unknown; AUROC {fit.auroc:.3f})"
               if fit.unknown_threshold is not None else ""))
    names = " + ".join(f"{name} ({b.num_classes} classes)" for name, b in banks.items())
    steps = next(iter(finetuners.values())).settings.steps if finetuners else 0
    outside_seen = any(f.unknown_threshold is not None for f in fits)
    fitted_on = (f"{names}: {cfg.ways}-way trials, {episodes} a shot, {queries} queries a class"
                 + (f", {unknown} unknown queries" if unknown and outside_seen else "") + f", seed {seed}"
                 + (f", the backbone fine-tuned {steps} steps to each support set" if steps else ""))
    return cal.Calibration(fitted_on, cfg.ways, tuple(fits), known_kept, finetune_steps=steps)


def with_calibration(ckpt: dict, calibration: cal.Calibration) -> dict:
    """A copy of the checkpoint dict with the record (the loader's parsed ``config_obj`` left out)."""
    out = {k: v for k, v in ckpt.items() if k != "config_obj"}
    out["calibration"] = calibration.to_dict()
    return out

