"""Configuration dataclasses, one per concern, saved inside every checkpoint.

``Config.to_dict()`` is what goes into ``config.json`` and ``checkpoint.pt``;
``Config.from_dict`` rebuilds it (unknown keys are an error, missing keys take
defaults, so older checkpoints stay loadable).
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from fewshot_mann.errors import UserError

# mann = LSTM controller + LRUA memory (the paper); ntm, dnc = the same controller with the
# NTM / DNC memory; lstm, ff = the paper's baselines; transformer = causal self-attention.
# keyed = a label-keyed memory read by cosine similarity (keyed.py; photos over backbone features).
MODELS = ("mann", "ntm", "dnc", "lstm", "ff", "transformer", "keyed")
# How a memory runs (memory/backend.py): auto = the fastest that can run here.
MEMORY_BACKENDS = ("auto", "autograd", "sequence", "kernel")
# Config keys of earlier releases that no longer mean anything: dropped when a saved config is read.
OBSOLETE_KEYS = {"model": ("compile",)}  # compile: the torch.compile path (compiled.py), removed
LABEL_ENCODINGS = ("onehot", "string")
DECODES = ("free", "seen")  # evaluation: any label may be answered / only labels given so far
DATASETS = ("omniglot", "folder")
ENCODERS = ("linear", "conv")
RESIZE_POLICIES = ("pad", "crop", "stretch")  # folder datasets: how any aspect becomes a square
# folder datasets, raw-pixel encoders: keep the pixels, invert them, or (auto) invert each image
# whose border is light, so every image has a dark background as the Omniglot reader gives.
POLARITIES = ("auto", "keep", "invert")
BACKBONE_LIBRARIES = ("timm", "torchvision")  # --encoder LIBRARY:NAME, a pretrained backbone (backbones.py)
FEATURE_NORMS = ("none", "l2", "center-l2")  # how backbone features enter a model (models.FeatureEncoder)

# The paper's string labels: 5 characters over an alphabet of 5 symbols.
STRING_LENGTH = 5
STRING_SYMBOLS = 5
MAX_IMAGE_SIZE = 1024  # pixels a side; beyond this a bank of images would not fit in memory
MAX_THREADS = 1024  # torch.set_num_threads crashes the process on absurd counts
MAX_SEED = 2**63  # seeds are in [0, 2**63): numpy and torch generators take them
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")  # mps, meta, xla, ...: not supported here
MAX_TEXT = 4096  # characters of any text field (a path, a class list)


# ----------------------------------------------------------------- options shared by every command
# One definition of each shared option's rule, used by Config.validate (train, a config file,
# a checkpoint) and by cli.check_shared_flags (evaluate, predict, kshot, knn, bench, inspect).

def device_problem(device) -> str | None:
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        return f"--device must be auto, cpu, cuda or cuda:N (got {device!r:.40})"
    return None


def threads_problem(threads) -> str | None:
    if not _is_int(threads) or not 0 <= threads <= MAX_THREADS:
        return f"--threads must be in [0, {MAX_THREADS}] (got {threads!r:.40}; 0 = torch default)"
    return None


def seed_problem(seed) -> str | None:
    if not _is_int(seed) or not 0 <= seed < MAX_SEED:
        return f"--seed must be in [0, 2**63) (got {seed!r:.40})"
    return None


def image_size_problem(size) -> str | None:
    if not _is_int(size) or size < 4:
        return f"--image-size must be at least 4 (got {size!r:.40})"
    if size > MAX_IMAGE_SIZE:
        return f"--image-size must be at most {MAX_IMAGE_SIZE} (got {size})"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------- types of config values

def _kind_of(annotation) -> tuple[type, bool]:
    """(bool | int | float | str, optional) of a dataclass field annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    return base, optional


def check_type(section: str, name: str, value, where: str = "config"):
    """``value`` if it has the type of field ``section.name`` (an int is accepted where a
    float goes, and returned as a float); ``UserError`` naming the field otherwise. A bool
    is never an int, a float is never an int, a string never a bool."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise UserError(f"{where}: unknown key {section}.{name}")
    base, optional = _kind_of(hints[name])
    if value is None and optional:
        return None
    label = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = _is_int(value)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    else:
        ok = isinstance(value, str) and len(value) <= MAX_TEXT
        label += f" of at most {MAX_TEXT} characters"
    if not ok:
        shown = type(value).__name__ if not isinstance(value, (bool, int, float, str, type(None))) else repr(value)
        raise UserError(f"{where}: {section}.{name} must be {label}{' or null' if optional else ''} "
                        f"(got {shown:.60})")
    return value


def is_backbone(encoder: str) -> bool:
    """``encoder`` names a pretrained backbone (LIBRARY:NAME), not a raw-pixel encoder."""
    lib, sep, name = str(encoder).partition(":")
    return bool(sep) and lib in BACKBONE_LIBRARIES and bool(name)


def legacy_polarity(data: dict) -> str:
    """The polarity a config saved before ``polarity`` existed was trained with: the Omniglot
    reader always gave dark backgrounds (so on a folder such a model needs ``auto``); a folder
    dataset was read as it is (``keep``)."""
    return "keep" if data.get("dataset", "omniglot") == "folder" else "auto"


@dataclass
class DataConfig:
    dataset: str = "omniglot"
    data_root: str | None = None
    split: str = "santoro"
    image_size: int = 20
    channels: int = 1
    rotations: bool = True  # training classes x4 by 90/180/270 degree rotations
    jitter_shift: float = 0.0  # max random shift (pixels) per training sample
    jitter_rotate: float = 0.0  # max random rotation (degrees) per training sample
    test_root: str | None = None
    test_classes: str | None = None
    validation_classes: str | None = None  # folder datasets: fraction (default 0.2), comma list or none
    resize: str = "pad"  # folder datasets: pad (keep all, letterbox), crop (centre) or stretch
    # Folder datasets with a raw-pixel encoder (linear/conv): see POLARITIES. Configs saved
    # before this option existed read it as legacy_polarity() (from_dict), so they keep
    # what they were trained on. Backbone encoders always see the photo as it is.
    polarity: str = "auto"
    # Training-only photometric augmentation for raw-pixel encoders: each episode inverted with
    # probability augment_invert; each image's contrast and brightness scaled/shifted by up to
    # +-augment_contrast / +-augment_brightness (fractions of the 0..1 range).
    augment_invert: float = 0.0
    augment_contrast: float = 0.0
    augment_brightness: float = 0.0


@dataclass
class EpisodeConfig:
    ways: int = 5
    instances: int = 10
    labels: str = "onehot"

    @property
    def steps(self) -> int:
        return self.ways * self.instances

    @property
    def label_groups(self) -> int:
        """How many softmax groups the output has (1 for one-hot, 5 for strings)."""
        return 1 if self.labels == "onehot" else STRING_LENGTH

    @property
    def group_size(self) -> int:
        """Classes per softmax group."""
        return self.ways if self.labels == "onehot" else STRING_SYMBOLS

    @property
    def label_size(self) -> int:
        return self.label_groups * self.group_size


@dataclass
class ModelConfig:
    model: str = "mann"
    encoder: str = "linear"
    controller_size: int = 200
    memory_slots: int = 128
    memory_width: int = 40
    num_read_heads: int = 4
    usage_decay: float = 0.95
    key_strength: bool = False  # extension: learned sharpening of the read softmax
    # encoder "timm:NAME" / "torchvision:NAME": a frozen pretrained backbone whose features are
    # computed once and cached (features.py); the checkpoint holds the model over the features
    # only and names the backbone (encoder, encoder_weights, weights_hash, feature_dim).
    encoder_weights: str = "imagenet"  # imagenet | none (random, seeded: tests) | PATH of a weights file
    weights_hash: str = ""  # sha256 of the backbone weights the features came from (set at training)
    feature_dim: int = 0  # backbone feature width (set at training)
    feature_norm: str = "center-l2"  # FEATURE_NORMS
    # > 0: a learned linear map of the normalised features to this width (e.g. 400, the input
    # width of the 20x20 Omniglot models, so --init-from one of them reuses its whole memory model)
    feature_proj: int = 0
    # which implementation of the memory runs (memory/backend.py; the same maths): auto,
    # autograd (the readable equations), sequence (hand-written BPTT), kernel (LRUA, C++, CPU)
    memory_backend: str = "auto"
    num_write_heads: int = 1  # ntm (the dnc has exactly one write head)
    shift_range: int = 1  # ntm: location shifts -S..+S (the NTM paper's {-1, 0, +1})
    transformer_layers: int = 3
    transformer_heads: int = 4
    transformer_width: int = 128
    transformer_max_steps: int = 256  # learned positions: the longest episode it can read


@dataclass
class TrainConfig:
    episodes: int = 100_000
    batch_size: int = 16
    lr: float = 1e-3
    grad_clip: float = 10.0
    lr_decay_at: int = 0  # after this many episodes the learning rate is multiplied by lr_decay_factor (0 = never)
    lr_decay_factor: float = 0.1
    seed: int = 0
    eval_every: int = 10_000
    eval_episodes: int = 400
    checkpoint_every: int = 5_000
    device: str = "auto"
    threads: int = 0  # 0 = torch default
    skip_nonfinite: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_types(self, where: str = "config") -> None:
        """``UserError`` for the first field whose value has the wrong type (see ``check_type``)."""
        for section in SECTIONS:
            part = getattr(self, section)
            if not isinstance(part, SECTIONS[section]):
                raise UserError(f"{where}: section {section!r} is not a mapping")
            for f in dataclasses.fields(part):
                setattr(part, f.name, check_type(section, f.name, getattr(part, f.name), where))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        if not isinstance(d, dict):
            raise UserError("config is not a mapping")
        parts = {}
        for f in dataclasses.fields(cls):
            sub = d.get(f.name, {})
            if sub is None:
                sub = {}
            if not isinstance(sub, dict):
                raise UserError(f"config section {f.name!r} is not a mapping")
            sub_cls = f.default_factory  # type: ignore[misc]
            if f.name == "data" and "polarity" not in sub:
                sub = {**sub, "polarity": legacy_polarity(sub)}
            sub = {k: v for k, v in sub.items() if k not in OBSOLETE_KEYS.get(f.name, ())}
            names = {g.name for g in dataclasses.fields(sub_cls)}
            unknown = set(sub) - names
            if unknown:
                raise UserError(f"unknown config keys in {f.name!r}: {sorted(map(str, unknown))[:10]}")
            parts[f.name] = sub_cls(**sub)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown config sections: {sorted(map(str, unknown))[:10]}")
        cfg = cls(**parts)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``UserError`` with one clear line for any invalid value (types first)."""
        self.check_types()
        d, e, m, t = self.data, self.episodes, self.model, self.train
        checks = [
            (d.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)} (got {d.dataset!r})"),
            (d.image_size >= 4, f"--image-size must be at least 4 (got {d.image_size})"),
            (d.channels in (1, 3), f"--channels must be 1 or 3 (got {d.channels})"),
            (d.image_size <= MAX_IMAGE_SIZE, f"--image-size must be at most {MAX_IMAGE_SIZE} (got {d.image_size})"),
            (0 <= d.jitter_shift < d.image_size,
             f"--jitter-shift must be >= 0 and below --image-size {d.image_size} (got {d.jitter_shift})"),
            (0 <= d.jitter_rotate <= 180, f"--jitter-rotate must be in [0, 180] degrees (got {d.jitter_rotate})"),
            (d.polarity in POLARITIES, f"--polarity must be one of {', '.join(POLARITIES)} (got {d.polarity!r})"),
            (0 <= d.augment_invert <= 1, f"--augment-invert must be a probability in [0, 1] (got {d.augment_invert})"),
            (0 <= d.augment_contrast < 1, f"--augment-contrast must be in [0, 1) (got {d.augment_contrast})"),
            (0 <= d.augment_brightness <= 1, f"--augment-brightness must be in [0, 1] (got {d.augment_brightness})"),
            (d.resize in RESIZE_POLICIES, f"--resize must be one of {', '.join(RESIZE_POLICIES)} (got {d.resize!r})"),
            (e.ways >= 1, f"--ways must be at least 1 (got {e.ways})"),
            (e.instances >= 1, f"--instances must be at least 1 (got {e.instances})"),
            (e.labels in LABEL_ENCODINGS, f"--labels must be one of {', '.join(LABEL_ENCODINGS)} (got {e.labels!r})"),
            (e.labels != "string" or e.ways <= STRING_SYMBOLS**STRING_LENGTH,
             f"--ways must be at most {STRING_SYMBOLS**STRING_LENGTH} with string labels"),
            (m.model in MODELS, f"--model must be one of {', '.join(MODELS)} (got {m.model!r})"),
            (m.encoder in ENCODERS or is_backbone(m.encoder),
             f"--encoder must be one of {', '.join(ENCODERS)} or LIBRARY:NAME with LIBRARY one of "
             f"{', '.join(BACKBONE_LIBRARIES)}, e.g. timm:tf_efficientnet_lite0 (got {m.encoder!r})"),
            (bool(m.encoder_weights), "--encoder-weights must be imagenet, none or the path of a weights file"),
            (m.feature_proj >= 0, f"--feature-proj must be >= 0 (got {m.feature_proj}; 0 = none)"),
            (m.feature_dim >= 0, f"feature_dim must be >= 0 (got {m.feature_dim})"),
            (m.feature_norm in FEATURE_NORMS,
             f"--feature-norm must be one of {', '.join(FEATURE_NORMS)} (got {m.feature_norm!r})"),
            (m.model != "keyed" or e.labels == "onehot", "--model keyed reads one-hot labels only (--labels onehot)"),
            (m.memory_backend in MEMORY_BACKENDS,
             f"--memory-backend must be one of {', '.join(MEMORY_BACKENDS)} (got {m.memory_backend!r})"),
            (m.controller_size >= 1, f"--controller-size must be at least 1 (got {m.controller_size})"),
            (m.memory_slots >= 1, f"--memory-slots must be at least 1 (got {m.memory_slots})"),
            (m.memory_width >= 1, f"--memory-width must be at least 1 (got {m.memory_width})"),
            (m.num_read_heads >= 1, f"--read-heads must be at least 1 (got {m.num_read_heads})"),
            (m.num_read_heads <= m.memory_slots,
             f"--read-heads ({m.num_read_heads}) cannot exceed --memory-slots ({m.memory_slots})"),
            (0.0 <= m.usage_decay <= 1.0, f"--usage-decay must be in [0, 1] (got {m.usage_decay})"),
            (m.num_write_heads >= 1, f"--write-heads must be at least 1 (got {m.num_write_heads})"),
            (m.model != "dnc" or m.num_write_heads == 1,
             f"--model dnc has exactly one write head (got --write-heads {m.num_write_heads}); use --model ntm for more"),
            (m.shift_range >= 0, f"--shift-range must be >= 0 (got {m.shift_range})"),
            (2 * m.shift_range + 1 <= m.memory_slots,
             f"--shift-range {m.shift_range} spans {2 * m.shift_range + 1} slots, more than --memory-slots {m.memory_slots}"),
            (m.transformer_layers >= 1, f"--transformer-layers must be at least 1 (got {m.transformer_layers})"),
            (m.transformer_max_steps >= 1, f"--transformer-max-steps must be at least 1 (got {m.transformer_max_steps})"),
            (m.transformer_heads >= 1, f"--transformer-heads must be at least 1 (got {m.transformer_heads})"),
            (m.transformer_width >= 1 and m.transformer_width % max(1, m.transformer_heads) == 0,
             f"--transformer-width must be a positive multiple of --transformer-heads "
             f"(got {m.transformer_width} and {m.transformer_heads})"),
            (m.model != "transformer" or m.transformer_max_steps >= e.steps,
             f"--transformer-max-steps {m.transformer_max_steps} is shorter than an episode "
             f"({e.ways} ways x {e.instances} instances = {e.steps} steps)"),
            (t.episodes >= 0, f"--episodes must be >= 0 (got {t.episodes})"),
            (t.batch_size >= 1, f"--batch-size must be at least 1 (got {t.batch_size})"),
            (0 < t.lr < math.inf, f"--lr must be a finite number > 0 (got {t.lr})"),
            (t.lr_decay_at >= 0, f"--lr-decay-at must be >= 0 episodes (got {t.lr_decay_at}; 0 = never)"),
            (0 < t.lr_decay_factor <= 1, f"--lr-decay-factor must be in (0, 1] (got {t.lr_decay_factor})"),
            (0 <= t.grad_clip < math.inf, f"--grad-clip must be >= 0 (got {t.grad_clip}; 0 disables clipping)"),
            (t.eval_every >= 0, f"--eval-every must be >= 0 (got {t.eval_every}; 0 = never)"),
            (t.eval_episodes >= 1, f"--eval-episodes must be at least 1 (got {t.eval_episodes})"),
            (t.checkpoint_every >= 1, f"--checkpoint-every must be at least 1 (got {t.checkpoint_every})"),
            (device_problem(t.device) is None, device_problem(t.device)),
            (threads_problem(t.threads) is None, threads_problem(t.threads)),
            (seed_problem(t.seed) is None, seed_problem(t.seed)),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


SECTIONS = {"data": DataConfig, "episodes": EpisodeConfig, "model": ModelConfig, "train": TrainConfig}
