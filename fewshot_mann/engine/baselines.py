"""The honest yardstick: plain, inductive baselines on exactly the trials and images a model is scored on.

Every evaluation prints, beside the model, these few-shot classifiers fitted to each trial's
support set alone (nothing is computed from the queries, no statistic crosses trials):

- ``nearest-centroid-raw-pixels`` / ``logistic-regression-raw-pixels``: the plain pixels, the image
  as the folder reader gives it at the model's input size (``loading.plain_pixels``: no polarity
  inversion, no ink re-framing; backbone inputs averaged down to 32 px), in [0, 1], flattened;
- ``nearest-centroid-features`` / ``logistic-regression-features`` (backbone models): the
  backbone's features scaled to unit length (a per-image operation; on the validation domains,
  eurosat and clothing, it scored 0-6 points above the raw features for both heads); for a model
  whose image encoder is trained with it (``--encoder conv`` / ``conv4``), that encoder's outputs,
  what its memory reads (``feature_banks``);
- ``nearest-centroid-head-features`` / ``logistic-regression-head-features`` (models reading block stages
  beside the backbone's head, ``--feature-stages``): the head's features alone, unit length, i.e. what a
  notebook on the backbone's output fits (``feature_banks``).

Logistic regression is scikit-learn's ``LogisticRegression(class_weight="balanced")`` (C = 1), solved in
batch (``fewshot.logistic``): on kshot's balanced support sets it is the plain ``LogisticRegression()``; in
``evaluate``'s label-shifted episodes the labels told so far are uneven, and the plain fit's unpenalised
intercept then answers the most-told label (eurosat, 2nd presentation: 17.4 % against nearest centroid's
51.8, 100 episodes, 2026-12-07), a baseline weaker than it need be. Rows (JSON ``"baselines"``): ``name``,
``ways``, ``shots``, ``accuracy``, ``ci95`` (``kshot``) or ``accuracy_by_instance``/``ci95`` lists
(``evaluate``, ``knn``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.episodes import evaluation_episodes, told_labels
from fewshot_mann.engine.evaluation import summarise
from fewshot_mann.fewshot import FewShotClassifier, LogisticRegression, NearestCentroid, prefix_logistic_scores


@dataclass(frozen=True)
class Baseline:
    name: str
    head: str  # centroid | logistic
    inputs: str  # pixels | features


BASELINES = (
    Baseline("nearest-centroid-raw-pixels", "centroid", "pixels"),
    Baseline("logistic-regression-raw-pixels", "logistic", "pixels"),
    Baseline("nearest-centroid-features", "centroid", "features"),
    Baseline("logistic-regression-features", "logistic", "features"),
    Baseline("nearest-centroid-head-features", "centroid", "head"),
    Baseline("logistic-regression-head-features", "logistic", "head"),
)


def baselines_for(banks) -> tuple[Baseline, ...]:
    """The baselines of the ``banks`` (names or a dict: ``"pixels"``, and ``feature_banks``' ``"features"`` /
    ``"head"`` where a model has them): those whose inputs are among them, in ``BASELINES``' order."""
    return tuple(b for b in BASELINES if b.inputs in banks)


LEARNED_ENCODERS = ("conv", "conv4")  # image encoders trained with the memory (models/encoders.py)


def encoded_bank(model: torch.nn.Module, bank: ClassBank, batch: int = 512) -> ClassBank:
    """``bank``'s images through ``model.encoder`` (evaluation mode): the features its memory reads."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(bank.images), batch):
            x = torch.from_numpy(np.ascontiguousarray(bank.images[i:i + batch])).to(device)
            x = x.float() / 255.0 if bank.images.dtype == np.uint8 else x.float()
            out.append(model.encoder(x.unsqueeze(1)).squeeze(1).double().cpu().numpy())
    model.train(was_training)
    return ClassBank(np.concatenate(out), bank.offsets, bank.counts, list(bank.names))


def feature_banks(bank: ClassBank, m, model: torch.nn.Module | None = None) -> dict[str, ClassBank]:
    """The feature banks of the model ``m`` (``ModelConfig``) over ``bank`` (what it reads): a backbone's,
    {"features": ``bank``} and, where it reads block stages beside the head (``feature_stages``), {"head": the
    head's own features} for the notebook's baselines; an image encoder trained with the memory
    (``LEARNED_ENCODERS``, given its ``model``), {"features": its outputs}; raw pixels, none."""
    from fewshot_mann.config import is_backbone
    from fewshot_mann.encoder_names import is_ensemble

    if not is_backbone(m.encoder):
        return {"features": encoded_bank(model, bank)} if model is not None and m.encoder in LEARNED_ENCODERS else {}
    if not getattr(m, "feature_stages", 0) and not is_ensemble(m.encoder):
        return {"features": bank}
    from fewshot_mann.models.backbones import head_block

    return {"features": bank, "head": ClassBank(head_block(bank.images, m.encoder), bank.offsets, bank.counts,
                                                list(bank.names))}


def vectors(images: np.ndarray, inputs: str) -> torch.Tensor:
    """(..., C, H, W) uint8 pixels or (..., D) features -> (..., D') float64 vectors a baseline reads."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if inputs == "pixels":
        return x.flatten(x.dim() - 3).double() / 255.0
    return torch.nn.functional.normalize(x.double(), dim=-1)


def classifier(head: str) -> FewShotClassifier:
    """The few-shot classifier of a baseline's ``head``."""
    return NearestCentroid() if head == "centroid" else LogisticRegression(balanced=True)


def scores(head: str, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int) -> torch.Tensor:
    return classifier(head).fit(support, labels, ways).scores(queries)


@dataclass
class BaselineResult:
    """One baseline at one (ways, shots): the mean over trials, its 95 % CI, and every trial's accuracy."""

    baseline: Baseline
    ways: int
    shots: int
    per_episode: np.ndarray  # (episodes,)
    episodes: int
    queries: int
    seed: int

    def row(self) -> dict:
        mean, ci = summarise(self.per_episode[:, None])
        return {"name": self.baseline.name, "ways": self.ways, "shots": self.shots, "accuracy": mean[0],
                "ci95": ci[0], "episodes": self.episodes, "queries": self.queries, "seed": self.seed}


def kshot_baselines(banks: dict[str, ClassBank], chosen: tuple[Baseline, ...], cfg: EpisodeConfig, shots: int,
                    episodes: int, seed: int, queries: int = 1, groups=None, chunk: int = 100) -> list[BaselineResult]:
    """Every baseline in ``chosen`` on the trials of ``kshot.kshot_accuracy`` (the same draw: episode i
    from ``evaluation_episodes(seed, i)``), each trial's support set K images a class, its queries the
    next ``queries``. ``banks``: {"pixels": ..., "features": ...} with the same classes and counts, so one
    draw of bank rows serves both."""
    first_bank = next(iter(banks.values()))
    for b in banks.values():
        if list(b.counts) != list(first_bank.counts) or list(b.names) != list(first_bank.names):
            raise ValueError("baseline banks differ in classes or counts: they would not be the same trials")
    ep_cfg = dataclasses.replace(cfg, instances=shots + queries)
    per = {b: [] for b in chosen}
    for first in range(0, episodes, chunk):
        count = min(chunk, episodes - first)
        drawn = evaluation_episodes(first_bank, ep_cfg, seed, first, count, groups)
        sup = drawn.instance < shots  # (E,T): the same number of support steps in every episode
        order = np.argsort(~sup, axis=1, kind="stable")  # support steps first, then the queries
        rows = np.take_along_axis(drawn.image_index, order, 1)
        labels = torch.from_numpy(np.take_along_axis(drawn.labels, order, 1))
        n_sup = cfg.ways * shots
        for b in chosen:
            x = vectors(banks[b.inputs].images[rows], b.inputs)  # (E,T,D)
            s = scores(b.head, x[:, :n_sup], labels[:, :n_sup], x[:, n_sup:], cfg.ways)
            per[b].append((s.argmax(-1) == labels[:, n_sup:]).double().mean(1).numpy())
    return [BaselineResult(b, cfg.ways, shots, np.concatenate(per[b]), episodes, queries, seed) for b in chosen]


def sequence_scores(head: str, x: torch.Tensor, labels: torch.Tensor, ways: int, chunk: int = 25) -> torch.Tensor:
    """(E,T,L) the answer of ``head`` at every step of label-shifted episodes, fitted on the steps
    before it only (what a sequence model has been told): x (E,T,D), labels (E,T). Step 0 (nothing
    told yet) and labels not yet told score NEG, so the answer there is label 0 / a told label."""
    e, t, _ = x.shape
    if head != "centroid":
        return prefix_logistic_scores(x.double(), labels, ways, balanced=True)
    earlier = torch.ones(t, t, dtype=torch.bool).tril(-1)  # [step, support step]
    out = []
    for first in range(0, e, chunk):
        xs, ys = x[first:first + chunk].double(), labels[first:first + chunk]
        n = xs.shape[0]
        w = earlier.double().expand(n, t, t).reshape(n * t, t)  # problem (episode, step): weights over steps
        y = ys.unsqueeze(1).expand(n, t, t).reshape(n * t, t)
        xx = xs.unsqueeze(1).expand(n, t, t, -1).reshape(n * t, t, -1)
        s = NearestCentroid().fit(xx, y, ways, weights=w).scores(xs.reshape(n * t, 1, -1)).squeeze(1)
        out.append(s.view(n, t, ways))
    return torch.cat(out)


class SupportFitted(torch.nn.Module):
    """A baseline read through the model interface ``(images, label_inputs) -> logits`` (B,T,L), so that
    ``evaluation.evaluate`` scores it by instance on exactly the model's episodes: at step t it is fitted
    on steps < t with their labels (one-hot; the label of step s is the input of step s + 1)."""

    def __init__(self, baseline: Baseline):
        super().__init__()
        self.baseline = baseline

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        ways = label_inputs.shape[-1]
        if self.baseline.inputs == "pixels":
            x = images.flatten(2).double()  # to_tensors gives pixels in [0, 1]
        else:
            x = torch.nn.functional.normalize(images.flatten(2).double(), dim=-1)
        labels = told_labels(label_inputs).argmax(-1).cpu()  # the last step's label is never support (zeros: label 0)
        return sequence_scores(self.baseline.head, x.cpu(), labels, ways).float().to(images.device)


# The by-instance logistic fit at an episode's last step solves Newton systems of ways * (T - 1) + ways unknowns
# (``fewshot.logistic``): 250 at 5-way 10 instances (34 s per 1,000 episodes on 2 cores, 2026-12-07,
# ``reports/performance_logistic_2026-12-07.json``); the fits per episode and their size both grow with the
# episode, so longer or wider episodes get nearest centroid only, and the skip is said.
PREFIX_LOGISTIC_MAX_UNKNOWNS = 400


def prefix_logistic_unknowns(cfg: EpisodeConfig) -> int:
    return cfg.ways * (cfg.ways * cfg.instances - 1) + cfg.ways


def by_instance_baselines(banks: dict[str, ClassBank], chosen: tuple[Baseline, ...], cfg: EpisodeConfig, *,
                          episodes: int, seed: int, batch_size: int, device="cpu", progress: bool = False
                          ) -> tuple[list[dict], list[dict]]:
    """Accuracy by instance of each baseline on ``evaluate``'s episodes (same seed, same draw; one-hot).
    Returns (rows, skipped): ``skipped`` rows {"name", "reason"} for baselines not run (string labels: the
    episode's labels are not one-hot codes; logistic regression above ``PREFIX_LOGISTIC_MAX_UNKNOWNS``)."""
    from fewshot_mann.engine.evaluation import evaluate

    out, skipped = [], []
    for b in chosen:
        if cfg.labels != "onehot":
            skipped.append({"name": b.name, "reason": "string labels: the by-instance baselines read one-hot labels"})
            continue
        if b.head == "logistic" and prefix_logistic_unknowns(cfg) > PREFIX_LOGISTIC_MAX_UNKNOWNS:
            skipped.append({"name": b.name, "reason": f"a {cfg.ways}-way {cfg.instances}-instance episode's last fit has "
                            f"{prefix_logistic_unknowns(cfg)} unknowns (at most {PREFIX_LOGISTIC_MAX_UNKNOWNS} are "
                            f"fitted by instance); kshot gives logistic regression at K shots"})
            continue
        res = evaluate(SupportFitted(b), banks[b.inputs], cfg, episodes=episodes, seed=seed,
                       batch_size=batch_size, device=device, progress=progress)
        out.append({"name": b.name, "ways": cfg.ways, "accuracy_by_instance": res["accuracy_by_instance"],
                    "ci95": res["ci95"], "accuracy": res["accuracy"], "episodes": res["episodes"]})
    return out, skipped


def by_instance_lines(rows: list[dict], skipped: list[dict]) -> list[str]:
    """The rows printed under ``evaluate``'s and ``knn``'s table (a column per instance), then each skip."""
    width = max([32] + [len(r["name"]) for r in rows])
    lines = [f"{r['name']:<{width}} " + " ".join(f"{100 * a:7.1f}" for a in r["accuracy_by_instance"]) for r in rows]
    if rows:
        lines.append("(the baselines, fitted on the steps before each step, answer only labels told so far: a class's "
                     "1st presentation is never theirs)")
    return lines + [f"{s['name']}: not run ({s['reason']})" for s in skipped]


def run_by_instance(banks: dict[str, ClassBank], cfg: EpisodeConfig, *, episodes: int, seed: int,
                    batch_size: int, device="cpu", progress: bool = False) -> dict:
    """``evaluate``/``knn``: every baseline of a model (``baselines_for``) by instance on its episodes, printed;
    returns the JSON entries ``"baselines"`` and ``"baselines_skipped"`` (where some were not run)."""
    if progress:
        print("baselines on the same episodes, fitted at each step on the steps before it ...", flush=True)
    rows, skipped = by_instance_baselines(banks, baselines_for(banks), cfg, episodes=episodes, seed=seed,
                                          batch_size=batch_size, device=device, progress=progress)
    for line in by_instance_lines(rows, skipped):
        print(line)
    return {"baselines": rows, **({"baselines_skipped": skipped} if skipped else {})}
