"""Pen-style augmentation: Omniglot's thin, crisp online strokes drawn as other handwriting looks.

Omniglot's characters were drawn with a mouse and rendered as one-pixel lines; handwriting that
users keep (scanned digits, forms, photographed notes) has thick, blurred, grey strokes, other
slants and proportions. ``PenStyle`` draws, per image, a stroke thickness (dilation), an affine
change of shape (scale, horizontal squeeze, slant, rotation, shift), a blur and an ink intensity,
so that a backbone trained on the characters meets those looks (issue 30, item 5).

Images are (N, C, H, W) in [0, 1] with bright strokes on a dark ground (the readers' polarity).
``NO_PEN`` changes nothing; ``HANDWRITING`` is the preset of ``pretrain --pen-augment`` (its ranges set by
eye against scanned digits and Omniglot characters, one setting; its effect measured on the validation
characters, ``reports/results-handwriting/``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PenStyle:
    probability: float = 0.0  # share of images restyled (the rest pass unchanged)
    max_dilation: int = 0  # stroke thickness: 0..max_dilation passes of a 3 x 3 maximum
    scale: tuple[float, float] = (1.0, 1.0)  # overall size
    squeeze: tuple[float, float] = (1.0, 1.0)  # width / height
    max_slant: float = 0.0  # horizontal shear, x += slant * y
    max_degrees: float = 0.0
    max_shift: float = 0.0  # pixels
    max_blur: float = 0.0  # Gaussian sigma in pixels, uniform in [0, max_blur]
    min_ink: float = 1.0  # the strokes' peak brightness, uniform in [min_ink, 1]

    def active(self) -> bool:
        return self.probability > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.active():
            return images
        n = images.shape[0]
        u = torch.rand(n, 10, generator=generator)
        chosen = (u[:, 0] < self.probability).to(images.device)
        out = dilate(images, (u[:, 1] * (self.max_dilation + 1)).floor().clamp(max=self.max_dilation).long())
        out = warp(out, self._affine(u[:, 2:8], images.shape[-1]))
        out = blur(out, u[:, 8] * self.max_blur)
        out = out * (self.min_ink + (1 - self.min_ink) * u[:, 9]).view(n, 1, 1, 1).to(out)
        return torch.where(chosen.view(n, 1, 1, 1), out.clamp_(0, 1), images)

    def _affine(self, u: torch.Tensor, size: int) -> torch.Tensor:
        """(N, 2, 3) maps from output to input coordinates (affine_grid's convention) of
        uniform draws ``u`` (N, 6): scale, squeeze, slant, angle, shift x and y."""
        lerp = lambda lo_hi, t: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * t  # noqa: E731
        scale, squeeze = lerp(self.scale, u[:, 0]), lerp(self.squeeze, u[:, 1])
        slant = (u[:, 2] * 2 - 1) * self.max_slant
        angle = (u[:, 3] * 2 - 1) * self.max_degrees * torch.pi / 180
        shift = (u[:, 4:6] * 2 - 1) * self.max_shift * 2 / size  # in affine_grid's [-1, 1] units
        cos, sin = torch.cos(angle), torch.sin(angle)
        # forward map: rotate, slant, then scale x by scale * squeeze and y by scale; grid needs its inverse
        forward = torch.stack([torch.stack([cos + slant * sin, -sin + slant * cos], 1),
                               torch.stack([sin, cos], 1)], 1)
        forward = torch.diag_embed(torch.stack([scale * squeeze, scale], 1)) @ forward
        inverse = torch.linalg.inv(forward)  # out = forward @ in + shift  ->  in = inverse @ (out - shift)
        return torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], 2)


def dilate(images: torch.Tensor, passes: torch.Tensor) -> torch.Tensor:
    """Each image thickened by ``passes[i]`` 3 x 3 maximum filters (bright strokes grow)."""
    out, grown = images, images
    for k in range(1, int(passes.max()) + 1 if len(passes) else 1):
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
        out = torch.where((passes >= k).view(-1, 1, 1, 1).to(images.device), grown, out)
    return out


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def blur(images: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """A separable Gaussian blur of its own ``sigma`` per image (sigma <= 0: unchanged)."""
    n, c, h, w = images.shape
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    s = sigma.to(images).clamp(min=1e-3).view(n, 1)
    k = torch.exp(-0.5 * (x.view(1, -1) / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, 2r+1)
    flat = images.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0)), k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius)), k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.reshape(n, c, h, w)


NO_PEN = PenStyle()
HANDWRITING = PenStyle(probability=0.8, max_dilation=1, scale=(0.75, 1.15), squeeze=(0.55, 1.05),
                       max_slant=0.35, max_degrees=10.0, max_shift=2.0, max_blur=1.0, min_ink=0.6)
