"""Label-shifted episodes, sampled in batches with numpy array operations.

An episode draws ``ways`` classes, gives them shuffled labels, picks ``instances``
images of each, and presents all ``ways * instances`` images in shuffled order. The
label of step t is the input at step t+1 (step 0 gets zeros). Each step carries its
instance index (0 = first presentation of that class in the episode).

Randomness only through the generator passed in. Evaluation episode i is a pure
function of (seed, i): ``episode_rng(seed, i)``; a training batch is a pure function
of (seed, step): ``batch_rng(seed, step)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.wording import instances_option
from fewshot_mann.config import STRING_LENGTH, STRING_SYMBOLS, EpisodeConfig
from fewshot_mann.errors import DataError, UserError

_STRING_CODES = STRING_SYMBOLS ** STRING_LENGTH
_EVAL_STREAM, _TRAIN_STREAM = 1, 2


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of evaluation episode ``index``."""
    return np.random.default_rng([_EVAL_STREAM, seed, index])


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of training batch ``step`` (the whole global batch)."""
    return np.random.default_rng([_TRAIN_STREAM, seed, step])


@dataclass
class Episodes:
    """A batch of episodes (numpy).

    images: (B, T, C, H, W) uint8; labels: (B, T) episode-local label 0..ways-1;
    instance: (B, T) 0-based presentation index of the step's class;
    label_digits: (B, ways, G) the G-symbol code of each label (G=1 for one-hot);
    classes: (B, ways) bank class index behind each label;
    image_index: (B, T) the bank row of each step's image (None where the images are not a bank's).
    """

    images: np.ndarray
    labels: np.ndarray
    instance: np.ndarray
    label_digits: np.ndarray
    classes: np.ndarray
    image_index: np.ndarray | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @staticmethod
    def concat(parts: list["Episodes"]) -> "Episodes":
        fields = [np.concatenate([getattr(p, f) for p in parts]) for f in
                  ("images", "labels", "instance", "label_digits", "classes")]
        index = None if any(p.image_index is None for p in parts) else np.concatenate([p.image_index for p in parts])
        return Episodes(*fields, image_index=index)


def with_ways(cfg: EpisodeConfig, ways: int, any_ways: bool = False) -> EpisodeConfig:
    """``cfg`` at ``ways`` classes per episode, for evaluating a trained checkpoint: string
    labels answer any number of ways; one-hot checkpoints have one input and one output per
    trained way, so only their own, unless the model answers any number (``any_ways``: the
    label-keyed memory). One clear error otherwise."""
    if ways < 1:
        raise UserError(f"--ways must be at least 1 (got {ways})")
    if cfg.labels == "onehot" and ways != cfg.ways and not any_ways:
        raise UserError(f"--ways {ways}: this checkpoint reads and answers {cfg.ways}-way one-hot labels, so it "
                        f"evaluates {cfg.ways}-way episodes only (string-label checkpoints answer any number of ways)")
    return dataclasses.replace(cfg, ways=ways)


def check_bank(bank: ClassBank, cfg: EpisodeConfig, what: str = "data") -> None:
    """One clear error if ``bank`` cannot supply an episode of ``cfg``."""
    if bank.num_classes < cfg.ways:
        raise DataError(f"--ways {cfg.ways} needs {cfg.ways} classes but the {what} has only {bank.num_classes}")
    if bank.min_count < cfg.instances:
        small = int(np.sum(bank.counts < cfg.instances))
        raise DataError(
            f"{instances_option(cfg.instances)} needs {cfg.instances} images per class but {small} class(es) of the "
            f"{what} have fewer (smallest: {bank.min_count})")


def sample_episodes(bank: ClassBank, cfg: EpisodeConfig, rng: np.random.Generator, batch: int) -> Episodes:
    """Draw ``batch`` independent episodes from ``bank``."""
    ways, k = cfg.ways, cfg.instances
    steps = ways * k
    # Classes: ways distinct of all, uniformly (argpartition of uniform keys).
    keys = rng.random((batch, bank.num_classes))
    classes = np.argpartition(keys, ways - 1, axis=1)[:, :ways] if ways < bank.num_classes \
        else np.tile(np.arange(ways), (batch, 1))
    # Instances: k distinct images of each chosen class.
    counts = bank.counts[classes]  # (B,ways)
    max_count = int(counts.max())
    keys = rng.random((batch, ways, max_count))
    keys[np.arange(max_count) >= counts[..., None]] = np.inf
    picks = np.argsort(keys, axis=-1)[..., :k]  # (B,ways,k)
    image_index = bank.offsets[classes][..., None] + picks
    # Labels: a shuffled assignment of label ids to the chosen classes.
    label_of_slot = np.argsort(rng.random((batch, ways)), axis=1)  # (B,ways)
    # Presentation order: every class k times, shuffled.
    order = np.argsort(rng.random((batch, steps)), axis=1)
    slot = np.repeat(np.arange(ways), k)[order]  # (B,T) which chosen class
    onehot = slot[..., None] == np.arange(ways)
    instance = (np.cumsum(onehot, axis=1) - 1)[onehot].reshape(batch, steps)
    rows = np.arange(batch)[:, None]
    step_index = image_index[rows, slot, instance]  # (B,T) bank row of each step's image
    images = bank.images[step_index]
    labels = label_of_slot[rows, slot]
    # The class behind each label id (inverse of label_of_slot).
    classes_by_label = np.empty_like(classes)
    classes_by_label[rows, label_of_slot] = classes
    if cfg.labels == "string":
        codes = np.argpartition(rng.random((batch, _STRING_CODES)), ways - 1, axis=1)[:, :ways]
        label_digits = (codes[..., None] // STRING_SYMBOLS ** np.arange(STRING_LENGTH)) % STRING_SYMBOLS
    else:
        label_digits = np.tile(np.arange(ways)[None, :, None], (batch, 1, 1))
    return Episodes(images, labels.astype(np.int64), instance.astype(np.int64),
                    label_digits.astype(np.int64), classes_by_label, step_index.astype(np.int64))


def evaluation_episodes(bank: ClassBank, cfg: EpisodeConfig, seed: int, start: int, count: int,
                        groups: list[np.ndarray] | None = None) -> Episodes:
    """Evaluation episodes start..start+count-1, each a pure function of (seed, index).

    ``groups`` (lists of class indices, e.g. ``name_groups``: Omniglot's alphabets): each
    episode's classes all come from one group holding at least ``ways`` classes, drawn by the
    episode's own generator (the harder, original one-shot protocol of Lake et al.)."""
    if groups is None:
        return Episodes.concat([sample_episodes(bank, cfg, episode_rng(seed, i), 1) for i in range(start, start + count)])
    eligible = [np.asarray(g, dtype=np.int64) for g in groups if len(g) >= cfg.ways]
    if not eligible:
        raise UserError(f"no group of classes (alphabet) holds {cfg.ways} classes; largest: "
                        f"{max((len(g) for g in groups), default=0)}")
    subsets: dict[int, tuple[ClassBank, np.ndarray]] = {}
    parts = []
    for i in range(start, start + count):
        rng = episode_rng(seed, i)
        k = int(rng.integers(len(eligible)))
        if k not in subsets:  # the group's classes as a bank, and its rows' rows in ``bank``
            rows = np.concatenate([np.arange(bank.offsets[c], bank.offsets[c] + bank.counts[c]) for c in eligible[k]])
            subsets[k] = (bank.subset(eligible[k]), rows)
        sub, rows = subsets[k]
        ep = sample_episodes(sub, cfg, rng, 1)
        ep.classes, ep.image_index = eligible[k][ep.classes], rows[ep.image_index]
        parts.append(ep)
    return Episodes.concat(parts)


def name_groups(names: list[str]) -> list[np.ndarray]:
    """Class indices grouped by the part of each name before its last ``/`` (an Omniglot
    character ``evaluation/Angelic/character01`` -> its alphabet ``evaluation/Angelic``)."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n.rsplit("/", 1)[0], []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in groups.values()]


@dataclass
class TensorBatch:
    """Model-ready tensors of a batch of episodes.

    images: (B,T,C,H,W) float in [0,1]; label_inputs: (B,T,G*S) previous step's label;
    targets: (B,T,G) symbol of each group; labels/instance: (B,T) int64.
    """

    images: torch.Tensor
    label_inputs: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    instance: torch.Tensor


def label_targets(label_digits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(B,T,G) the symbols of each step's label: ``label_digits`` (B,ways,G) looked up at ``labels`` (B,T)."""
    return np.take_along_axis(label_digits, labels[..., None].repeat(label_digits.shape[-1], -1), axis=1)


def to_tensors(ep: Episodes, cfg: EpisodeConfig, device="cpu", augment=None,
               generator: torch.Generator | None = None) -> TensorBatch:
    """Convert (and optionally augment) a batch of episodes."""
    batch, steps = ep.labels.shape
    images = torch.from_numpy(ep.images).to(device=device, dtype=torch.float32)
    if ep.images.dtype == np.uint8:  # pixels; backbone features (float) are used as they are
        images = images.div_(255.0)
    elif augment is not None:
        augment = None  # pixel augmentations do not apply to features
    if augment is not None:
        images = augment(images, generator)
    targets_np = label_targets(ep.label_digits, ep.labels)
    targets = torch.from_numpy(targets_np).to(device)  # (B,T,G)
    onehot = torch.nn.functional.one_hot(targets, cfg.group_size).flatten(2).float()  # (B,T,G*S)
    return TensorBatch(images, shifted_labels(onehot), targets,
                       torch.from_numpy(ep.labels).to(device), torch.from_numpy(ep.instance).to(device))


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label shift of the paper, (B,T,L) -> (B,T,L): step t's input is step t-1's label (zeros at step 0)."""
    label_inputs = torch.zeros_like(labels)
    label_inputs[:, 1:] = labels[:, :-1]
    return label_inputs


def told_labels(label_inputs: torch.Tensor) -> torch.Tensor:
    """The shift undone, (B,T,L) -> (B,T,L): the label of step s, which a model is told at step s+1
    (zeros at the last step: its label is never told)."""
    labels = torch.zeros_like(label_inputs)
    labels[:, :-1] = label_inputs[:, 1:]
    return labels


class Photometric:
    """Training augmentation for raw pixels: each episode inverted (1 - x) with probability
    ``invert``; each image's contrast scaled by 1 +- ``contrast`` and brightness shifted by
    +- ``brightness`` (uniform), clipped to [0, 1]. So a model meets dark-on-light, faint and
    washed-out inputs in training."""

    def __init__(self, invert: float, contrast: float, brightness: float):
        self.invert, self.contrast, self.brightness = float(invert), float(contrast), float(brightness)

    def active(self) -> bool:
        return self.invert > 0 or self.contrast > 0 or self.brightness > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """images: (B, T, C, H, W) in [0, 1]."""
        if not self.active():
            return images
        b, t = images.shape[:2]
        u = torch.rand(b, t, 3, generator=generator).to(images.device)
        flip = (torch.rand(b, 1, generator=generator).to(images.device) < self.invert).float()  # per episode
        shape = (b, t) + (1,) * (images.dim() - 2)
        gain = (1 + (u[..., 0] * 2 - 1) * self.contrast).view(shape)
        shift = ((u[..., 1] * 2 - 1) * self.brightness).view(shape)
        mean = images.mean(dim=tuple(range(2, images.dim())), keepdim=True)
        out = ((images - mean) * gain + mean + shift).clamp_(0, 1)
        flip = flip.view((b, 1) + (1,) * (images.dim() - 2))
        return flip * (1 - out) + (1 - flip) * out


class Compose:
    def __init__(self, *parts):
        self.parts = parts

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for part in self.parts:
            images = part(images, generator)
        return images


class Jitter:
    """Per-sample random shift (pixels) and rotation (degrees), batched with grid_sample."""

    def __init__(self, max_shift: float, max_degrees: float):
        self.max_shift, self.max_degrees = float(max_shift), float(max_degrees)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.max_shift == 0 and self.max_degrees == 0:
            return images
        shape = images.shape
        flat = images.reshape(-1, *shape[-3:])
        n, size = flat.shape[0], shape[-1]
        u = torch.rand(n, 3, generator=generator).to(flat.device) * 2 - 1
        angle = u[:, 0] * self.max_degrees * torch.pi / 180
        shift = u[:, 1:] * self.max_shift * 2 / size
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(flat, grid, align_corners=False, padding_mode="zeros")
        return out.reshape(shape)
