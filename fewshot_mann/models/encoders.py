"""Encoders: what every model sees of an image, ``(B,T,C,H,W) -> (B,T,features)``.

``build_encoder`` picks the one a config names: raw pixels (``linear``, the paper's
input), a small CNN (``conv``), the few-shot Conv4 trained with the memory (``conv4``, its
output normalised as ``FeatureEncoder`` normalises a backbone's, so a model meta-trained over
the frozen Conv4's features starts from the same inputs), or the cached features of a frozen pretrained backbone
(``timm:NAME`` / ``torchvision:NAME``, normalised by ``FeatureEncoder``). Each has
``out_features``, the width it produces, and ``per_image``: whether an image's encoding
depends on that image alone (then a model may encode each distinct image once, see
``MANN.project_images``; not so for features centred on their episode's mean).
"""
from __future__ import annotations

import torch
from torch import nn

from fewshot_mann.config import Config, is_backbone
from fewshot_mann.errors import UserError


class LinearEncoder(nn.Module):
    """The paper's input: raw pixels, flattened. (B,T,C,H,W) -> (B,T,C*H*W)."""

    per_image = True

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.out_features = channels * image_size * image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(2)


class ConvEncoder(nn.Module):
    """A small CNN applied to every image: (B,T,C,H,W) -> (B,T,features)."""

    per_image = True

    def __init__(self, channels: int, image_size: int, width: int = 64):
        super().__init__()
        layers, size, c_in = [], image_size, channels
        for c_out in (32, width, width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, size = c_out, size // 2
            if size < 2:
                break
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = c_in * size * size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, t = images.shape[:2]
        return self.net(images.flatten(0, 1)).view(b, t, -1)


class FeatureEncoder(nn.Module):
    """Backbone features (B,T,D) -> (B,T,D), normalised so that a cosine read compares
    directions that tell the episode's classes apart:

    - ``center-l2``: minus the mean feature of the episode's earlier steps (steps < t; step 0
      as it is): SimpleShot's centring, computed per episode so it follows the domain, and
      causal, so the answer at step t never depends on an image shown later; then unit length;
    - ``l2``: unit length; ``none``: as they are.

    Then scaled by sqrt(D), so each component is of order 1, like pixels; with ``project`` > 0,
    a learned linear map to ``project`` values. ``dropout`` > 0: while training, each feature value is zeroed
    with that probability (and the rest scaled up) before the map, against a map that learns the training
    classes by heart (meta-training over a few hundred photo classes).
    """

    def __init__(self, feature_dim: int, norm: str = "center-l2", project: int = 0, dropout: float = 0.0):
        super().__init__()
        self.feature_dim, self.norm = feature_dim, norm
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.proj = nn.Linear(feature_dim, project) if project else None
        self.out_features = project or feature_dim
        self.per_image = norm != "center-l2"

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.flatten(2)
        return self._finish(x - running_mean_before(x) if self.norm == "center-l2" else x)

    def following(self, feats: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
        """(B,Q,D) each encoded as the step right after the sequence ``earlier`` (B,S,D): what ``forward``
        gives at the last step of ``[*earlier, feats[:, q]]``, for every q at once."""
        x = feats.flatten(2)
        return self._finish(x - earlier.flatten(2).mean(1, keepdim=True) if self.norm == "center-l2" else x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm != "none":
            x = torch.nn.functional.normalize(x, dim=-1) * self.feature_dim ** 0.5
        if self.dropout is not None:
            x = self.dropout(x)
        return self.proj(x) if self.proj is not None else x


class Conv4Encoder(nn.Module):
    """The few-shot Conv4 (conv4.py) on every image, trained with the memory: (B,T,C,H,W) -> (B,T,F),
    then ``FeatureEncoder``'s normalisation of its features (``norm``, ``project``, ``dropout``).
    Batch norm uses each batch's statistics while training (an image's encoding then depends on
    its batch: not ``per_image`` in training) and the running ones in evaluation."""

    def __init__(self, image_size: int, norm: str = "l2", project: int = 0, dropout: float = 0.0):
        super().__init__()
        from fewshot_mann.models.conv4 import Conv4

        self.backbone = Conv4()
        width = Conv4.output_width(image_size)
        self.features = FeatureEncoder(width, norm, project, dropout)
        self.out_features = self.features.out_features

    @property
    def per_image(self) -> bool:
        return self.features.per_image and not self.training

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, t = images.shape[:2]
        return self.features(self.backbone(images.flatten(0, 1)).view(b, t, -1))


def running_mean_before(x: torch.Tensor) -> torch.Tensor:
    """(B,T,D) -> (B,T,D): at step t the mean of steps 0..t-1 (zeros at step 0)."""
    sums = x.cumsum(dim=1) - x
    steps = torch.arange(x.shape[1], device=x.device, dtype=x.dtype).clamp_min(1).view(1, -1, 1)
    return sums / steps


def build_encoder(cfg: Config) -> nn.Module:
    d = cfg.data
    if is_backbone(cfg.model.encoder):
        if cfg.model.feature_dim < 1:
            raise UserError(f"--encoder {cfg.model.encoder}: the feature width is not known yet (set at training)")
        return FeatureEncoder(cfg.model.feature_dim, cfg.model.feature_norm, cfg.model.feature_proj,
                              cfg.model.feature_dropout)
    if cfg.model.encoder == "conv4":
        return Conv4Encoder(d.image_size, cfg.model.feature_norm, cfg.model.feature_proj, cfg.model.feature_dropout)
    if cfg.model.encoder == "conv":
        return ConvEncoder(d.channels, d.image_size)
    return LinearEncoder(d.channels, d.image_size)
