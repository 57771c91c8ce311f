"""Accuracy by instance position with 95% confidence intervals, on fixed episodes."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import DECODES, EpisodeConfig
from fewshot_mann.data.episodes import evaluation_episodes, to_tensors

def loss_fn(logits: torch.Tensor, targets: torch.Tensor, cfg: EpisodeConfig) -> torch.Tensor:
    """Cross-entropy summed over label groups, mean over steps. logits (B,T,G*S), targets (B,T,G)."""
    flat = logits.reshape(-1, cfg.group_size)
    return torch.nn.functional.cross_entropy(flat, targets.reshape(-1), reduction="sum") / targets[..., 0].numel()


def correct_steps(logits: torch.Tensor, targets: torch.Tensor, cfg: EpisodeConfig) -> torch.Tensor:
    """(B,T) bool: every symbol of the step's label predicted right."""
    pred = logits.reshape(*targets.shape, cfg.group_size).argmax(-1)
    return (pred == targets).all(-1)


def correct_steps_seen(logits: torch.Tensor, targets: torch.Tensor, cfg: EpisodeConfig) -> torch.Tensor:
    """(B,T) bool: the answer restricted to the labels given so far in the episode is right.

    At step t the candidates are the labels of steps 0..t-1 (given as input up to step t);
    each is scored by the sum over label groups of its symbols' log-probabilities (for string
    labels: the log of the product of the per-character probabilities), and the best one is
    the answer, the same restriction ``predict`` applies to the support labels. A step whose
    class has not been shown yet is therefore always wrong (except step 0, which has no
    candidate and keeps the free answer). logits (B,T,G*S), targets (B,T,G).
    """
    b, t, g = targets.shape
    s = cfg.group_size
    logp = logits.reshape(b, t, g, s).log_softmax(-1).reshape(b, t, g * s)
    onehot = torch.nn.functional.one_hot(targets, s).reshape(b, t, g * s).to(logp.dtype)
    scores = logp @ onehot.transpose(1, 2)                        # (B, t, u): step t's score of step u's label
    earlier = torch.ones(t, t, dtype=torch.bool, device=logits.device).tril(-1)
    best = scores.masked_fill(~earlier, float("-inf")).argmax(-1)  # (B, T); ties -> first occurrence
    pred = targets.gather(1, best.unsqueeze(-1).expand(b, t, g))
    correct = (pred == targets).all(-1)
    correct[:, 0] = correct_steps(logits[:, :1], targets[:, :1], cfg)[:, 0]
    return correct


def per_episode_instance_accuracy(correct: torch.Tensor, instance: torch.Tensor, instances: int) -> torch.Tensor:
    """(B, instances) accuracy of each episode at each presentation index."""
    b = correct.shape[0]
    sums = torch.zeros(b, instances, dtype=torch.float64, device=correct.device)
    counts = torch.zeros_like(sums)
    sums.scatter_add_(1, instance, correct.double())
    counts.scatter_add_(1, instance, torch.ones(instance.shape, dtype=torch.float64, device=correct.device))
    return sums / counts.clamp_min(1)


def wilson_half_width(p: float, n: int, z: float = 1.96) -> float:
    """The larger distance from ``p`` to a bound of the Wilson score interval for n trials.

    Unlike the normal interval it does not collapse at p = 0 or 1: there it is z^2 / (n + z^2)."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(p - (centre - half), centre + half - p))


def summarise(acc: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and 95% CI half-width per instance: the normal approximation over episodes, or,
    where every episode scored the same (the normal interval collapses to 0, e.g. 0% at a string
    model's 1st instance), the Wilson interval counting each episode as one trial (conservative:
    an episode holds several answers)."""
    n = acc.shape[0]
    mean = acc.mean(0)
    sd = acc.std(0, ddof=1) if n > 1 else np.zeros_like(mean)
    ci = [float(1.96 * s / math.sqrt(n)) if s > 0 else wilson_half_width(float(min(1.0, max(0.0, m))), n)
          for m, s in zip(mean, sd)]
    return [float(x) for x in mean], ci


class BankProjection:
    """Each distinct image of a batch of episodes through the model's encoder and the image
    columns of its input layer once (``MANN.project_images``): the batch's steps then gather
    their rows instead of projecting every appearance again (an image appears in many of a
    batch's episodes). Never more projections than the plain path; ``for_model`` is None where
    the model cannot use it (``projects_images``)."""

    def __init__(self, model: torch.nn.Module, bank: ClassBank, device):
        self.model, self.bank, self.device = model, bank, device

    @classmethod
    def for_model(cls, model: torch.nn.Module, bank: ClassBank, device) -> "BankProjection | None":
        return cls(model, bank, device) if getattr(model, "projects_images", False) and len(bank.images) else None

    WORTH = 0.5  # project when a batch shows each distinct image at least twice on average

    def rows(self, image_index: np.ndarray) -> torch.Tensor | None:
        """(B, T) bank rows -> (B, T, 4H) projected images; None where the batch shows too few
        images more than once for it to pay (a large bank: the plain path is faster then)."""
        distinct, where = np.unique(image_index, return_inverse=True)
        if len(distinct) > self.WORTH * image_index.size:
            return None
        x = torch.from_numpy(self.bank.images[distinct]).to(device=self.device, dtype=torch.float32)
        projected = self.model.project_images(x.div_(255.0) if self.bank.images.dtype == np.uint8 else x)
        return projected[torch.from_numpy(where.reshape(image_index.shape)).to(self.device)]


def scored_batches(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, *, seed: int, start: int,
                   episodes: int, batch_size: int, device, decode: str):
    """Yield ``(batch, logits, correct)`` for episodes start..start+episodes-1 of ``bank`` (each
    fixed by (seed, index)) in batches, with ``model`` in eval mode until the loop ends.
    ``correct`` (B,T) is scored by ``decode`` (checked here, before the first batch)."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES} (got {decode!r})")
    score = correct_steps if decode == "free" else correct_steps_seen

    def run():
        was_training = model.training
        model.eval()
        try:
            projection = BankProjection.for_model(model, bank, device)
            for first in range(start, start + episodes, batch_size):
                count = min(batch_size, start + episodes - first)
                drawn = evaluation_episodes(bank, cfg, seed, first, count)
                batch = to_tensors(drawn, cfg, device)
                rows = projection.rows(drawn.image_index) if projection is not None else None
                if rows is not None:
                    logits = model.forward_projected(rows, batch.label_inputs)
                else:
                    logits = model(batch.images, batch.label_inputs)
                yield batch, logits, score(logits, batch.targets, cfg)
        finally:
            model.train(was_training)

    return run()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, episodes: int = 1000,
             seed: int = 0, batch_size: int = 250, device="cpu", progress: bool = False,
             start: int = 0, decode: str = "free") -> dict:
    """Evaluate on episodes start..start+episodes-1 of ``bank`` (each fixed by (seed, index)).

    ``decode``: "free" (the paper's protocol: the argmax of every label group, any label may be
    answered) or "seen" (the answer restricted to labels given so far, ``correct_steps_seen``).

    Returns ``accuracy_by_instance`` and ``ci95`` (lists, element 0 = 1st instance),
    ``accuracy`` (all steps), ``episodes``, ``ways``, ``instances``, ``seed``, and the raw
    ``per_episode`` array (episodes, instances) under ``_per_episode`` for aggregation.
    """
    batches = scored_batches(model, bank, cfg, seed=seed, start=start, episodes=episodes,
                             batch_size=batch_size, device=device, decode=decode)
    chunks = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=episodes, desc="evaluating", unit="ep", leave=False)
    try:
        for batch, _, correct in batches:
            chunks.append(per_episode_instance_accuracy(correct, batch.instance, cfg.instances).cpu().numpy())
            if bar is not None:
                bar.update(correct.shape[0])
    finally:
        batches.close()  # restores the model's mode now, also when the loop stopped early
        if bar is not None:
            bar.close()
    acc = np.concatenate(chunks, axis=0)
    mean, ci = summarise(acc)
    return {
        "accuracy_by_instance": mean,
        "ci95": ci,
        "accuracy": float(acc.mean()),
        "episodes": int(episodes),
        "ways": cfg.ways,
        "instances": cfg.instances,
        "labels": cfg.labels,
        "seed": int(seed),
        "decode": decode,
        "_per_episode": acc,
    }


def format_table(result: dict, title: str = "accuracy by instance") -> str:
    """A plain-text table of accuracy (%) and 95% CI at each instance."""
    acc, ci = result["accuracy_by_instance"], result["ci95"]
    header = "instance " + " ".join(f"{i + 1:>7}" for i in range(len(acc)))
    row = "accuracy " + " ".join(f"{100 * a:7.1f}" for a in acc)
    row_ci = "  ±95%CI " + " ".join(f"{100 * c:7.1f}" for c in ci)
    decode = result.get("decode", "free")
    lines = [f"{title} ({result['ways']}-way, {result['labels']} labels, {result['episodes']} episodes, "
             f"seed {result['seed']}" + (", answers restricted to labels seen so far" if decode == "seen" else "") + ")",
             header, row, row_ci]
    return "\n".join(lines)


@torch.inference_mode()
def instance_breakdown(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, instance: int = 2,
                       episodes: int = 500, seed: int = 0, batch_size: int = 250, device="cpu",
                       decode: str = "free") -> dict:
    """Where the ``instance``-th presentations of classes are answered right or wrong.

    On ``evaluate``'s episodes, every step that shows a class for the ``instance``-th time
    (instance >= 2) is recorded with its step index and its gap (steps since the same class's
    previous presentation). Returns ``{"step": array, "gap": array, "correct": bool array,
    "free_answer_is_episode_label": bool array}`` (one entry per such step, episode order); the
    last says whether the free answer was a label given earlier in the episode (right or wrong).
    Every episode holds exactly ``ways`` such steps, so ``correct.mean()`` equals ``evaluate``'s
    accuracy at that instance.
    """
    if instance < 2:
        raise ValueError("instance must be at least 2 (the first presentation has no gap)")
    steps, gaps, oks, known = [], [], [], []
    batches = scored_batches(model, bank, cfg, seed=seed, start=0, episodes=episodes, batch_size=batch_size,
                             device=device, decode=decode)
    with contextlib.closing(batches):  # the model's mode is restored however the loop ends
        for batch, logits, ok in batches:
            targets = batch.targets
            b, t, g = targets.shape
            same = (targets.unsqueeze(2) == targets.unsqueeze(1)).all(-1)           # (B, t, u)
            earlier = torch.ones(t, t, dtype=torch.bool, device=targets.device).tril(-1)
            free = logits.reshape(b, t, g, cfg.group_size).argmax(-1)
            is_label = ((free.unsqueeze(2) == targets.unsqueeze(1)).all(-1) & earlier).any(-1)
            # the previous presentation: the last earlier step of the same class
            idx = torch.arange(t, device=targets.device)
            prev = torch.where(same & earlier, idx, -1).amax(-1)                      # (B, t)
            rows, cols = (batch.instance == instance - 1).nonzero(as_tuple=True)
            steps.append(cols.cpu().numpy())
            gaps.append((cols - prev[rows, cols]).cpu().numpy())
            oks.append(ok[rows, cols].cpu().numpy())
            known.append(is_label[rows, cols].cpu().numpy())
    return {"step": np.concatenate(steps), "gap": np.concatenate(gaps), "correct": np.concatenate(oks),
            "free_answer_is_episode_label": np.concatenate(known)}
