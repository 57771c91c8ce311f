"""Several frozen ImageNet backbones read as one encoder: ``--encoder timm:tf_efficientnet_lite0+timm:tf_efficientnet_lite2``.

Different networks trained on the same images err on different photos; their features side by side are a
better representation than either's (on the validation domains, Lite0 and Lite2 together scored 2-3 points
above the notebook's Lite0 features at 1 and 5 shots, where Lite2 alone scored level with Lite0:
``reports/results-photos/README.md``). The image is read once, by the preprocessing of the member with the
largest input (``ensemble_preprocessing``); each member gets it resized to its own input size and normalised as
it was trained (``Ensemble.member_input``). The features are each member's (with its ``--feature-stages``)
scaled to unit length, side by side, divided by the square root of the number of members (``stages.join``):
unit length, the first member's head first (``backbones.head_block``: the notebook's features).

``staged`` splits an ensemble as ``--finetune`` needs it (``tail(stem(x))``): the stem is every member's stem, its
maps flattened side by side into one (N, D) tensor (so one cache entry a view), the tail every member's tail on
its part, all trained together.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from fewshot_mann.models.stages import StagedBackbone, join, stage_features


def ensemble_digest(identities: list[str]) -> str:
    """One sha256 for the members' weights identities (in order)."""
    return hashlib.sha256("+".join(identities).encode()).hexdigest()


class Ensemble(nn.Module):
    """``members`` (frozen modules mapping their own normalised (N, 3, S_i, S_i) input to features), read from one
    input normalised by ``mean``/``std`` at the ensemble's size; ``preps``: each member's ``Preprocessing``."""

    def __init__(self, members: list[nn.Module], preps: list, mean, std):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.preps, self.mean, self.std = list(preps), tuple(mean), tuple(std)
        for i, p in enumerate(preps):  # x_i = (x * std + mean - mean_i) / std_i, per channel
            scale = torch.tensor(std) / torch.tensor(p.std)
            self.register_buffer(f"scale{i}", scale.view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"shift{i}", ((torch.tensor(mean) - torch.tensor(p.mean)) / torch.tensor(p.std))
                                 .view(1, 3, 1, 1), persistent=False)

    def member_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The ensemble's normalised input as member ``i`` reads it: its normalisation, its size."""
        x = x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
        size = self.preps[i].image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return join([m(self.member_input(x, i)) for i, m in enumerate(self.members)])

    def with_members(self, members: list[nn.Module]) -> Ensemble:
        return Ensemble(members, self.preps, self.mean, self.std)


def with_stages(backbone: nn.Module, feature_stages: int) -> nn.Module:
    """``stages.stage_features`` for a backbone or an ensemble (each member reading its last stages)."""
    if isinstance(backbone, Ensemble):
        return backbone.with_members([stage_features(m, feature_stages) for m in backbone.members])
    return stage_features(backbone, feature_stages)


class _Stems(nn.Module):
    """Every member's stem on its own input; the maps flattened side by side: (N, sum of C_i H_i W_i)."""

    def __init__(self, ensemble: Ensemble, stems: list[nn.Module]):
        super().__init__()
        self.ensemble, self.stems = ensemble, nn.ModuleList(stems)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([s(self.ensemble.member_input(x, i)).flatten(1) for i, s in enumerate(self.stems)], dim=1)


class _Tails(nn.Module):
    """Every member's tail on its part of the stems' flat maps (shapes ``shapes``), features joined."""

    def __init__(self, tails: list[nn.Module], shapes: list[tuple[int, int, int]]):
        super().__init__()
        self.tails, self.shapes = nn.ModuleList(tails), shapes
        self.sizes = [c * h * w for c, h, w in shapes]

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split(self.sizes, dim=1)
        return join([t(p.reshape(-1, *s).contiguous(memory_format=torch.channels_last))
                     for t, p, s in zip(self.tails, parts, self.shapes)])


class StagedEnsemble(nn.Module):
    """An ensemble split as ``tail(stem(x))`` (``StagedBackbone``'s interface); frozen as built."""

    def __init__(self, ensemble: Ensemble, tail_stages: int, feature_stages: int):
        super().__init__()
        staged = [StagedBackbone(m, tail_stages, feature_stages) for m in ensemble.members]
        with torch.no_grad():
            size = max(p.image_size for p in ensemble.preps)
            probe = torch.zeros(1, 3, size, size)
            shapes = [tuple(s.stem(ensemble.member_input(probe, i)).shape[1:]) for i, s in enumerate(staged)]
        self.stem = _Stems(ensemble, [s.stem for s in staged])
        self.tail = _Tails([s.tail for s in staged], shapes)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.stem(x))


def staged(backbone: nn.Module, tail_stages: int, feature_stages: int) -> nn.Module:
    """``StagedBackbone`` of a backbone, or ``StagedEnsemble`` of an ensemble."""
    if isinstance(backbone, Ensemble):
        return StagedEnsemble(backbone, tail_stages, feature_stages)
    return StagedBackbone(backbone, tail_stages, feature_stages)
