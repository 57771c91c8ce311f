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

from fewshot_mann import limits
from fewshot_mann.encoder_names import encoder_problems, is_backbone
from fewshot_mann.errors import UserError
from fewshot_mann.options import field_problem, flag_of, kind_of, option
from fewshot_mann.config_legacy import LEGACY_MODEL_DEFAULTS, LEGACY_READING_FIELDS, legacy_reading

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
ENCODERS = ("linear", "conv", "conv4")  # raw pixels in; conv4: models/conv4.py, trained with the memory (issue 30)
# folder datasets: how any aspect becomes a square. auto: backbone for a timm/torchvision backbone, pad otherwise;
# backbone: the backbone's own eval transform (timm's data config: shorter side to size / crop_pct, bicubic,
# centre crop); pad: whole image, letterboxed; crop: centre square; stretch
RESIZE_POLICIES = ("auto", "backbone", "pad", "crop", "stretch")
# folder datasets, raw-pixel encoders: keep the pixels, invert them, or (auto) invert each image
# whose border is light, so every image has a dark background as the Omniglot reader gives.
POLARITIES = ("auto", "keep", "invert")
INK_FRAMES = ("auto", "keep")
KEYED_WRITES = ("mean", "logistic")  # keyed: a label's slot = its support's mean, or fitted logistic weights
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
# a checkpoint) and by the shared flags of every other command (cli/common.py).

def device_problem(device) -> str | None:
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        return f"--device must be auto, cpu, cuda or cuda:N (got {device!r:.40})"
    return None


def threads_problem(threads) -> str | None:
    if not _is_int(threads) or not 0 <= threads <= MAX_THREADS:
        return f"--threads must be in [0, {MAX_THREADS}] (got {threads!r:.40}; 0 = torch default)"
    return None


def seed_problem(seed, flag: str = "--seed") -> str | None:
    if not _is_int(seed) or not 0 <= seed < MAX_SEED:
        return f"{flag} must be in [0, 2**63) (got {seed!r:.40})"
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

def check_type(section: str, name: str, value, where: str = "config"):
    """``value`` if it has the type of field ``section.name`` (an int is accepted where a
    float goes, and returned as a float); ``UserError`` naming the field otherwise. A bool
    is never an int, a float is never an int, a string never a bool."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise UserError(f"{where}: unknown key {section}.{name}")
    base, optional = kind_of(hints[name])
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


def answers_any_ways(cfg: "Config") -> bool:
    """True for a model with nothing learned per label (the label-keyed memory, one-hot): it answers
    as many classes as a support set holds, whatever ways it was trained on."""
    return cfg.model.model == "keyed" and cfg.episodes.labels == "onehot"


# ------------------------------------------------------------------ one declaration per option
# Every config field is declared once, with ``options.option(...)``; see options.py.

def flagged_fields():
    """(section, field, flag) of every config field that has a train flag, section by section."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            flag = flag_of(f)
            if flag:
                yield section, f, flag


@dataclass
class DataConfig:
    dataset: str = option("omniglot", choices=DATASETS)
    data_root: str | None = option(
        None, help="Omniglot root (default: $FEWSHOT_MANN_DATA, else ~/.cache/fewshot-mann/data) or image folder")
    # which classes are held out; the flag is --class-split (--split: its deprecated spelling)
    split: str = option("santoro", flag="--class-split", aliases=("--split",),
                        help='Omniglot class split: santoro, lake, or a .json file {"train": [names], "test": [names]}')
    image_size: int = option(20, problem=image_size_problem)
    channels: int = option(1, choices=(1, 3), help="1 = grayscale, 3 = RGB")
    rotations: bool = option(True, help="multiply training classes by 90/180/270 degree rotations")
    # max random shift (pixels) per training sample; its bound is --image-size (validate)
    jitter_shift: float = option(0.0, help="max random shift (pixels), training only")
    jitter_rotate: float = option(0.0, low=0, high=180, bounds="in [0, 180] degrees",
                                  help="max random rotation (degrees), training only")
    test_root: str | None = option(None, help="folder datasets: a separate folder of held-out classes")
    test_classes: str | None = option(
        None, help="folder datasets: held-out fraction (default 0.3, seeded by --seed) or comma list of classes")
    validation_classes: str | None = option(  # folder datasets: fraction (default 0.2), comma list or none
        None, help="folder datasets: validation classes (every in-training check and choice) drawn from the "
                   "non-test classes: a fraction of all classes (default 0.2, seeded by --seed), a comma list, "
                   "or none; Omniglot splits name theirs")
    resize: str = option("auto", choices=RESIZE_POLICIES,
                         help="folder datasets: auto (backbone for a timm/torchvision backbone, else pad), backbone "
                              "(the backbone's own resize and centre crop), pad (whole image, letterboxed), crop "
                              "(centre square) or stretch")
    # Folder datasets with a raw-pixel encoder (linear/conv): see POLARITIES. Configs saved
    # before this option existed read it as legacy_reading() (from_dict), so they keep
    # what they were trained on. Backbone encoders always see the photo as it is.
    polarity: str = option("auto", choices=POLARITIES,
                           help="folder datasets, raw-pixel encoders: auto = invert each image whose border is "
                                "light, so every image is bright on dark like the Omniglot reader's; keep; invert")
    # Folder datasets with a raw-pixel encoder: see folder.apply_ink_frame. Configs saved before
    # this option existed read it as legacy_reading() (from_dict).
    ink_frame: str = option("auto", choices=INK_FRAMES,
                            help="folder datasets, raw-pixel encoders: auto = an image whose ink box spans more than "
                                 "0.9 or less than 0.3 of its side (outside the Omniglot training characters' range) "
                                 "is cropped to its ink and centred with the characters' usual margin; keep")
    # Training-only photometric augmentation for raw-pixel encoders: each episode inverted with
    # probability augment_invert; each image's contrast and brightness scaled/shifted by up to
    # +-augment_contrast / +-augment_brightness (fractions of the 0..1 range).
    augment_invert: float = option(0.0, low=0, high=1, bounds="a probability in [0, 1]",
                                   help="raw pixels, training only: probability of inverting an episode")
    augment_contrast: float = option(0.0, low=0, high=1, high_open=True,
                                     help="raw pixels, training only: random contrast factor 1 +- this per image")
    augment_brightness: float = option(0.0, low=0, high=1,
                                       help="raw pixels, training only: random brightness shift +- this per image")


@dataclass
class EpisodeConfig:
    ways: int = option(5, low=1, limit=limits.MAX_WAYS)
    instances: int = option(10, low=1, limit=limits.MAX_INSTANCES)
    labels: str = option("onehot", choices=LABEL_ENCODINGS)

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


NEEDS_FOR_INIT = "--memory-init features needs --model mann --previous-image --write-vector --memory-input (and no --no-key-strength)"


@dataclass
class ModelConfig:
    model: str = option("mann", choices=MODELS)
    # linear / conv, or LIBRARY:NAME (checked in validate: any NAME of a known library)
    encoder: str = option("linear", help=f"{', '.join(ENCODERS)} (raw pixels; conv4 trains with the memory, from "
                                         "--encoder-weights PATH of `fewshot-mann pretrain` where given), or a frozen pretrained backbone "
                                         "LIBRARY:NAME, e.g. timm:tf_efficientnet_lite0 (pip install -e \".[photos]\"; "
                                         "features computed once and cached), or ImageNet backbones side by side, "
                                         "timm:tf_efficientnet_lite0+timm:tf_efficientnet_lite2")
    controller_size: int = option(200, low=1, limit=limits.MAX_WIDTH)
    memory_slots: int = option(128, low=1, limit=limits.MAX_SLOTS)
    memory_width: int = option(40, low=1, limit=limits.MAX_WIDTH)
    num_read_heads: int = option(4, flag="--read-heads", low=1, limit=limits.MAX_HEADS)
    usage_decay: float = option(0.95, low=0, high=1)
    key_strength: bool = option(  # extension: learned sharpening of the read softmax (the default since 2026-12-07)
        True, help="extension: learned sharpening of the read softmax (not in the paper; --no-key-strength is the "
                   "paper's MANN)")
    # extension (issue 30): the controller's input at step t also holds the previous step's image
    # encoding, beside that image's label (which arrives at t as in the paper): the pair the memory
    # binds is read as one input, not carried over a step in the LSTM state
    previous_image: bool = option(
        False, help="mann/ntm/dnc: the controller also reads the previous step's image (encoded) beside its label, "
                    "so it can write the exact image-label pair to memory (extension, not in the paper; the "
                    "labels still arrive one step late)")
    memory_input: bool = option(
        False, help="mann/ntm/dnc: the memory's keys, gates and written vector read the step's input beside the "
                    "controller's state (extension, not in the paper; LRUA runs it on the sequence backend, not the C++ kernel)")
    write_vector: bool = option(
        False, help="mann: the memory is written with its own learned vector, not the read key (extension, not in "
                    "the paper; with --previous-image a step can store the previous image and its label while it "
                    "looks up its own image; runs on the sequence backend, not the C++ kernel)")
    memory_init: str = option(
        "random", choices=("random", "features"),
        help="mann with --previous-image --write-vector --memory-input: features = the memory starts as a nearest-"
             "neighbour reader (keys: the step's features; written: the previous features and their label; "
             "--memory-width at least features + labels; chosen with --read-heads 1 --usage-decay 0.99), then trains "
             "(extension, not in the paper)")
    # encoder "timm:NAME" / "torchvision:NAME": a frozen pretrained backbone whose features are
    # computed once and cached (features.py); the checkpoint holds the model over the features
    # only and names the backbone (encoder, encoder_weights, weights_hash, feature_dim).
    encoder_weights: str = option(  # imagenet | none (random, seeded: tests) | PATH of a weights file
        "imagenet", help="backbone weights: imagenet (the library's; tf_efficientnet_lite0 offline from the "
                         "[photos] extra), none (random, tests) or PATH of a state-dict file")
    embed_precision: str = option(
        "auto", choices=("auto", "fp32", "bf16"),
        help="backbone features: computed in bfloat16 (auto: where the CPU has avx512_bf16, for timm/torchvision "
             "backbones; about 2x the images/s, the same accuracy within CI on eurosat and clothing) or float32")
    feature_stages: int = option(
        0, low=0, limit=limits.MAX_FEATURE_STAGES, note="0 = the head alone",
        help="timm stage backbones: the features are the head's and the pooled outputs of the last N block stages, "
             "side by side (each unit length, the whole unit length; on eurosat N = 1 scored 2-3 points above the "
             "head alone)")
    weights_hash: str = option("", flag=False)  # sha256 of the backbone weights the features came from (set at training)
    feature_dim: int = option(0, flag=False, low=0, limit=limits.MAX_FEATURE_DIM)  # backbone feature width (set at training)
    feature_norm: str = option(
        "center-l2", choices=FEATURE_NORMS,
        help="backbone features: centred on the episode mean and unit length, unit length, or as they are")
    # > 0: a learned linear map of the normalised features to this width (e.g. 400, the input
    # width of the 20x20 Omniglot models, so --init-from one of them reuses its whole memory model)
    feature_proj: int = option(0, low=0, limit=limits.MAX_WIDTH, note="0 = none",
                               help="backbone features: learned linear map to this width first (0 = none; 400 lets "
                                    "--init-from a 20x20 Omniglot model reuse its memory model)")
    feature_dropout: float = option(0.0, low=0, high=1, high_open=True,
                                    help="backbone features: dropout probability on them while training (0 = off)")
    # keyed: how a label's slot is written (models/keyed.py)
    keyed_write: str = option(
        "mean", choices=KEYED_WRITES,
        help="keyed: each label's slot holds the mean of its support (read by cosine: nearest centroid) or the "
             "weights of a logistic regression fitted to the support (read by dot product: log-probabilities)")
    read_power: float = option(
        1.0, low=0, high=1, low_open=True, note="1 = as they are",
        help="keyed: the centroid read (and so the unknown score) compares the features raised elementwise to this "
             "power, sign kept, then unit length (a power transform; 0.1 on the photos model: unknown-class AUROC "
             "0.83 vs 0.76 on eurosat at 5 shots, the answers unchanged)")
    # which implementation of the memory runs (memory/backend.py; the same maths)
    memory_backend: str = option(
        "auto", choices=MEMORY_BACKENDS,
        help="mann/ntm/dnc: which implementation of the memory runs (the same maths): auto = the fastest here; "
             "autograd = the readable equations; sequence = hand-written BPTT; kernel = mann's C++ kernel (CPU)")
    num_write_heads: int = option(1, flag="--write-heads", low=1, limit=limits.MAX_HEADS,  # ntm (the dnc has exactly one write head)
                                  help="ntm: write heads (dnc: always 1)")
    shift_range: int = option(1, low=0, limit=limits.MAX_SHIFT,  # ntm: location shifts -S..+S (the NTM paper's {-1, 0, +1})
                              help="ntm: location shifts -S..+S of the previous weighting")
    transformer_layers: int = option(3, low=1, limit=limits.MAX_LAYERS)
    transformer_heads: int = option(4, low=1, limit=limits.MAX_HEADS)
    transformer_width: int = option(128, limit=limits.MAX_WIDTH)  # a positive multiple of transformer_heads (validate)
    transformer_max_steps: int = option(  # learned positions: the longest episode it can read
        256, low=1, limit=limits.MAX_EPISODE_STEPS, help="transformer: learned positions, the longest episode (ways x instances) it can read")


@dataclass
class TrainConfig:
    # 240,000 at lr 2e-3 (with the key strength): the README's main command, ~8.5 minutes on 2 cores, Table 1's MANN
    # row at instances 1-5 (chosen on the validation characters, reports/performance.md, 2026-12-07)
    episodes: int = option(240_000, low=0, limit=limits.MAX_EPISODES, help="total training episodes")
    batch_size: int = option(16, low=1, limit=limits.MAX_BATCH)
    lr: float = option(2e-3, low=0, low_open=True, high=math.inf, high_open=True, bounds="a finite number > 0")
    grad_clip: float = option(10.0, low=0, high=math.inf, high_open=True, note="0 disables clipping",
                              help="gradient-norm clip (0 = off)")
    # after this many episodes the learning rate is multiplied by lr_decay_factor (0 = never)
    lr_decay_at: int = option(0, low=0, limit=limits.MAX_EPISODES, bounds=">= 0 episodes", note="0 = never",
                              help="episodes after which the learning rate is multiplied by --lr-decay-factor "
                                   "(0 = never)")
    lr_decay_factor: float = option(0.1, low=0, low_open=True, high=1)
    seed: int = option(0, problem=seed_problem, help="seed in [0, 2**63)")
    eval_every: int = option(10_000, low=0, limit=limits.MAX_EPISODES, note="0 = never",
                            help="episodes between held-out evaluations (0 = never)")
    eval_episodes: int = option(400, low=1, limit=limits.MAX_EVAL_EPISODES)
    checkpoint_every: int = option(5_000, low=1, limit=limits.MAX_EPISODES, help="episodes between checkpoints")
    device: str = option("auto", problem=device_problem, help="auto, cpu, cuda or cuda:N")
    threads: int = option(0, problem=threads_problem, help="torch threads (0 = torch default)")  # 0 = torch default
    skip_nonfinite: bool = option(False, negatable=False, help="skip batches with a NaN/inf loss instead of stopping")
    # a time budget: the run ends as if its last episode were reached (checks, checkpoint, final evaluation)
    max_minutes: float = option(0.0, low=0, high=math.inf, high_open=True, note="0 = no limit",
                                help="end the run once training has taken this many minutes (0 = no limit; "
                                     "single-process runs)")


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
            if f.name == "data":
                sub = {**{name: legacy_reading(sub) for name in LEGACY_READING_FIELDS}, **sub}
            elif f.name == "model":
                sub = {**LEGACY_MODEL_DEFAULTS, **sub}
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

    def batch_inputs(self) -> int:
        """Input values of one training batch: episodes x steps x (pixels, or a backbone's features)."""
        d = self.data
        width = (self.model.feature_dim or 1) if is_backbone(self.model.encoder) else d.channels * d.image_size ** 2
        return self.train.batch_size * self.episodes.steps * width

    def validate(self) -> None:
        """Raise ``UserError`` with one clear line for any invalid value: types first, then each
        field's own bounds and choices (its ``option`` metadata), then the rules between fields."""
        self.check_types()
        for section in SECTIONS:
            part = getattr(self, section)
            for problem in filter(None, (field_problem(f, getattr(part, f.name)) for f in dataclasses.fields(part))):
                raise UserError(problem)
        d, e, m = self.data, self.episodes, self.model
        checks = [
            (0 <= d.jitter_shift < d.image_size,
             f"--jitter-shift must be >= 0 and below --image-size {d.image_size} (got {d.jitter_shift})"),
            (e.steps <= limits.MAX_EPISODE_STEPS,
             f"--ways x --instances must be at most {limits.MAX_EPISODE_STEPS:,} steps an episode "
             f"(got {e.ways} x {e.instances} = {e.steps:,})"),
            (self.batch_inputs() <= limits.MAX_BATCH_VALUES,
             f"one training batch would hold {self.batch_inputs():,} input values (--batch-size x --ways x --instances "
             f"x pixels), over {limits.MAX_BATCH_VALUES:,}: lower --batch-size, --image-size or the episode"),
            (m.model not in ("mann", "ntm", "dnc")
             or self.train.batch_size * m.memory_slots * m.memory_width <= limits.MAX_BATCH_VALUES,
             f"the memories of one training batch (--batch-size x --memory-slots x --memory-width = "
             f"{self.train.batch_size * m.memory_slots * m.memory_width:,} values) are over {limits.MAX_BATCH_VALUES:,}: "
             "lower one of them"),
            (e.labels != "string" or e.ways <= STRING_SYMBOLS**STRING_LENGTH,
             f"--ways must be at most {STRING_SYMBOLS**STRING_LENGTH} with string labels"),
            (not m.previous_image or m.model in ("mann", "ntm", "dnc"),
             f"--previous-image is an input of the memory models' controller (mann, ntm, dnc; got --model {m.model})"),
            (not m.memory_input or m.model in ("mann", "ntm", "dnc"),
             f"--memory-input feeds the memory models' interface (mann, ntm, dnc; got --model {m.model})"),
            (not m.write_vector or m.model == "mann", f"--write-vector is an LRUA option (--model mann; got {m.model})"),
            (m.memory_init == "random" or m.model == "mann" and m.previous_image and m.write_vector and m.memory_input and m.key_strength,
             NEEDS_FOR_INIT),
            (m.model != "keyed" or e.labels == "onehot", "--model keyed reads one-hot labels only (--labels onehot)"),
            (m.model != "keyed" or m.keyed_write == "mean" or self.train.episodes == 0,
             "--keyed-write logistic is fitted to each support set in closed form: there is nothing to meta-train "
             "(give --episodes 0)"),
            (m.num_read_heads <= m.memory_slots,
             f"--read-heads ({m.num_read_heads}) cannot exceed --memory-slots ({m.memory_slots})"),
            (m.model != "dnc" or m.num_write_heads == 1,
             f"--model dnc has exactly one write head (got --write-heads {m.num_write_heads}); use --model ntm for more"),
            (2 * m.shift_range + 1 <= m.memory_slots,
             f"--shift-range {m.shift_range} spans {2 * m.shift_range + 1} slots, more than --memory-slots {m.memory_slots}"),
            (m.transformer_width >= 1 and m.transformer_width % max(1, m.transformer_heads) == 0,
             f"--transformer-width must be a positive multiple of --transformer-heads "
             f"(got {m.transformer_width} and {m.transformer_heads})"),
            (m.model != "transformer" or m.transformer_max_steps >= e.steps,
             f"--transformer-max-steps {m.transformer_max_steps} is shorter than an episode "
             f"({e.ways} ways x {e.instances} instances = {e.steps} steps)"),
        ]
        checks += [(False, p) for p in encoder_problems(m.encoder, m.encoder_weights, m.feature_stages, d.image_size,
                                                        ENCODERS)]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


SECTIONS = {"data": DataConfig, "episodes": EpisodeConfig, "model": ModelConfig, "train": TrainConfig}
