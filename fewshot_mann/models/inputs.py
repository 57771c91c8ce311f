"""How an image becomes what a model reads, resolved once from the config (after timm's
``PretrainedCfg`` + ``resolve_data_config``): an ``ImageReader`` (``data/images.py``: size,
channels, resize, polarity, ink frame) and, for a backbone encoder, a ``BackboneSpec`` (the
encoder, its weights reference with their one identity rule, and the preprocessing the backbone
wants). Every loader receives these values; ``data/`` never asks ``models/`` itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fewshot_mann.config import Config, DataConfig, ModelConfig, is_backbone
from fewshot_mann.encoder_names import is_ensemble, members
from fewshot_mann.data.images import ImageReader, pixel_reader
from fewshot_mann.models.backbones import (OFFLINE_WEIGHTS, Preprocessing, file_sha256, offline_weights_path, preprocessing,
                                           split_encoder)


@dataclass(frozen=True)
class BackboneSpec:
    """A frozen backbone as an input pipeline sees it: ``encoder`` (``LIBRARY:NAME``), ``weights``
    (``--encoder-weights``: imagenet, none or a file) and ``preprocessing`` (its input size, crop,
    mean and std)."""

    encoder: str
    weights: str
    preprocessing: Preprocessing

    @classmethod
    def of(cls, m: ModelConfig) -> BackboneSpec | None:
        """The backbone of ``m``; None for a raw-pixel encoder."""
        if not is_backbone(m.encoder):
            return None
        return cls(m.encoder, m.encoder_weights, preprocessing(m.encoder))

    @property
    def grayscale(self) -> bool:
        """Our own backbones (``fewshot:``) read grayscale, trained on bright strokes: as raw pixels do."""
        return self.encoder.startswith("fewshot:")

    def weights_identity(self) -> str | None:
        """The one identity of the weights, known without building the backbone: the sha256 of the
        weights file (a local file, or the offline package of ``OFFLINE_WEIGHTS``), ``none`` for random
        weights, ``LIBRARY:NAME:imagenet`` for a library's own download; None where the weights are
        not available here. An ensemble: the sha256 of its members' identities together, None where one is."""
        if is_ensemble(self.encoder):
            from fewshot_mann.models.ensemble import ensemble_digest

            ids = [BackboneSpec(p, self.weights, preprocessing(p)).weights_identity() for p in members(self.encoder)]
            return None if None in ids else ensemble_digest(ids)
        lib, name = split_encoder(self.encoder)
        if self.weights == "none":
            return "none"
        if self.weights == "imagenet":
            if lib == "timm" and name in OFFLINE_WEIGHTS:
                path = offline_weights_path(name)
                return file_sha256(path) if path is not None else None
            return f"{lib}:{name}:imagenet"  # the library's own download, identified by name
        path = Path(self.weights).expanduser()
        return file_sha256(path) if path.is_file() else None

    def reader(self, d: DataConfig) -> ImageReader:
        """How the folder reader decodes images for this backbone: RGB at its own input size by its eval
        crop, the photo as it is (ImageNet features know light backgrounds); a grayscale ``fewshot:``
        backbone reads as raw pixels do, at its own size."""
        size = self.preprocessing.image_size
        if self.grayscale:
            return pixel_reader(d, size, 1)
        resize = f"fraction:{self.preprocessing.crop_pct:g}" if d.resize in ("auto", "backbone") else d.resize
        return ImageReader(size, 3, resize)


def image_reader(cfg: Config) -> ImageReader:
    """How the folder reader decodes images for ``cfg``: raw-pixel encoders read the configured
    size/channels with ``data.polarity`` and ``data.ink_frame``; a backbone reads as its
    ``BackboneSpec.reader`` says."""
    spec = BackboneSpec.of(cfg.model)
    return spec.reader(cfg.data) if spec is not None else pixel_reader(cfg.data)
