"""What an ``--encoder`` name says, read as text: a raw-pixel encoder, a pretrained backbone ``LIBRARY:NAME``, or
several ImageNet backbones joined by ``+`` (an ensemble, ``timm:tf_efficientnet_lite0+timm:tf_efficientnet_lite2``:
each reads the image at its own size and their features are joined side by side, ``models/ensemble.py``).
Below ``config`` and ``models``: both ask it, it asks neither."""
from __future__ import annotations

BACKBONE_LIBRARIES = ("timm", "torchvision", "fewshot")  # --encoder LIBRARY:NAME, a pretrained backbone (backbones.py)
ENSEMBLE_LIBRARIES = ("timm", "torchvision")  # RGB ImageNet backbones; fewshot: ones read grayscale at their own size
SEP = "+"


def members(encoder: str) -> list[str]:
    """The backbones an encoder name joins (one for a single backbone)."""
    return str(encoder).split(SEP)


def _one_backbone(name: str) -> bool:
    lib, sep, rest = name.partition(":")
    return bool(sep) and lib in BACKBONE_LIBRARIES and bool(rest)


def is_backbone(encoder: str) -> bool:
    """``encoder`` names a pretrained backbone (LIBRARY:NAME) or an ensemble of them, not a raw-pixel encoder."""
    return all(_one_backbone(p) for p in members(encoder))


def is_ensemble(encoder: str) -> bool:
    """``encoder`` joins two or more backbones with ``+``."""
    return SEP in str(encoder) and is_backbone(encoder)


def ensemble_problem(encoder: str, weights: str) -> str | None:
    """Why an ensemble cannot be read (one line), or None: its members, and its weights (each member reads its own
    ImageNet weights, or random ones: one file cannot hold several backbones). The one rule ``Config.validate`` and
    ``backbones.build_backbone`` both apply."""
    parts = members(encoder)
    if len(parts) < 2:
        return None
    if any(p.partition(":")[0] not in ENSEMBLE_LIBRARIES for p in parts):
        return (f"--encoder {encoder}: an ensemble joins ImageNet backbones of {' or '.join(ENSEMBLE_LIBRARIES)} "
                "(fewshot: backbones read grayscale at their own size)")
    if len(set(parts)) < len(parts):
        return f"--encoder {encoder}: a backbone is named twice"
    if weights and weights not in ("imagenet", "none"):  # no weights at all: the rule every encoder has says so
        return f"--encoder {encoder}: an ensemble's backbones read their own ImageNet weights (--encoder-weights imagenet)"
    return None


def is_staged(encoder: str) -> bool:
    """Every backbone of ``encoder`` is a timm one (block stages ``--feature-stages`` and ``--finetune`` read)."""
    return is_backbone(encoder) and all(p.startswith("timm:") for p in members(encoder))


def encoder_problems(encoder: str, weights: str, feature_stages: int, image_size: int, pixel_encoders) -> list[str]:
    """One line for each rule the encoder fields break (``Config.validate``): the name, an ensemble's members, the
    weights, conv4's smallest input, ``--feature-stages`` on timm backbones only."""
    rules = [
        (encoder in pixel_encoders or is_backbone(encoder),
         f"--encoder must be one of {', '.join(pixel_encoders)} or LIBRARY:NAME with LIBRARY one of "
         f"{', '.join(BACKBONE_LIBRARIES)}, e.g. timm:tf_efficientnet_lite0, or backbones joined by + (got {encoder!r})"),
        (ensemble_problem(encoder, weights) is None, ensemble_problem(encoder, weights) or ""),
        (bool(weights), "--encoder-weights must be imagenet, none or the path of a weights file"),
        (encoder != "conv4" or image_size >= 16,
         f"--encoder conv4 halves the image four times: --image-size must be at least 16 (got {image_size})"),
        (feature_stages == 0 or is_staged(encoder),
         f"--feature-stages reads the block stages of timm backbones (got --encoder {encoder})"),
    ]
    return [message for ok, message in rules if not ok]
