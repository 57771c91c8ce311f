"""A timm stage backbone split as ``tail(stem(x))``, its features optionally read at its last block stages too.

EfficientNet / MobileNet-style timm networks (``conv_stem``, ``bn1``, ``blocks``, ``conv_head``, ``bn2``,
``global_pool``) are a stem, a list of block stages and a head. ``StagedBackbone`` splits one at any
stage: a frozen ``stem`` (the image to the output of stage ``cut - 1``) and a ``tail`` (the last
``tail_stages`` stages, the head convolution, the pooling). ``--finetune`` trains the tail alone over cached
stem outputs (``fewshot.finetune``); the frozen embedding (``features.embed_images``) is the same module.

``feature_stages`` > 0 (``--feature-stages``): the features are the head's (e.g. 1,280) beside the global
average of the last ``feature_stages`` block stages' outputs (Lite0: 320, then 192 channels), each block
scaled to unit length and the whole divided by the square root of the number of blocks, so that it is unit
length too (``join``). Earlier stages carry what a far domain needs and the ImageNet head has pooled away:
on the validation domain eurosat one stage scored 2-3 points above the head alone at 1 and 5 shots, on
clothing photos (near ImageNet) it scored level (``reports/results-photos/select-feature-layers.json``).
"""
from __future__ import annotations

import torch
from torch import nn

from fewshot_mann.errors import UserError

PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")


def join(blocks: list[torch.Tensor]) -> torch.Tensor:
    """(N, D1), (N, D2), ... -> (N, D1 + D2 + ...) float32: each block unit length, the whole unit length."""
    out = torch.cat([nn.functional.normalize(b.float(), dim=-1) for b in blocks], dim=-1)
    return out / len(blocks) ** 0.5


def has_stages(backbone: nn.Module) -> bool:
    return all(hasattr(backbone, a) for a in PARTS)


class Tail(nn.Module):
    """The last block stages and the head of a staged backbone: ``forward(stem output)`` -> features.
    ``stages`` > 0: the head features joined with the pooled outputs of the last ``stages`` of (its input,
    each of its block stages), the latest first."""

    def __init__(self, blocks: list[nn.Module], head: list[nn.Module], stages: int = 0):
        super().__init__()
        if not 0 <= stages <= len(blocks) + 1:
            raise UserError(f"feature stages {stages} reach before the tail's input ({len(blocks)} stages in the tail)")
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(*head, nn.Flatten(1))
        self.stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        h = self.head(x)
        if not self.stages:
            return h
        return join([h, *(o.float().mean((2, 3)) for o in reversed(outs[-self.stages:]))])


class StagedBackbone(nn.Module):
    """A stage-structured timm backbone as ``tail(stem(x))``; ``tail_stages`` of its last stages are in the
    tail (which ``--finetune`` trains), ``feature_stages`` of them are read beside the head (``Tail``).
    Frozen (eval mode, no gradients) as built."""

    def __init__(self, backbone: nn.Module, tail_stages: int = 0, feature_stages: int = 0):
        super().__init__()
        if not has_stages(backbone):
            raise UserError("--finetune and --feature-stages need a timm backbone with stages (EfficientNet, "
                            f"MobileNet, MixNet: {type(backbone).__name__} has no conv_stem/blocks/conv_head)")
        if not 0 <= tail_stages < len(backbone.blocks):
            raise UserError(f"--finetune: tail_stages {tail_stages} outside 0..{len(backbone.blocks) - 1}")
        if feature_stages > min(tail_stages + 1, len(backbone.blocks)):
            raise UserError(f"--feature-stages {feature_stages}: fine-tuning trains the last {tail_stages} stage(s), "
                            f"so at most {tail_stages + 1} stage(s) can be read beside the head")
        cut = len(backbone.blocks) - tail_stages
        self.stem = nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[:cut])
        self.tail = Tail(list(backbone.blocks[cut:]), [backbone.conv_head, backbone.bn2, backbone.global_pool],
                         feature_stages)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.stem(x))


def stage_features(backbone: nn.Module, feature_stages: int) -> nn.Module:
    """``backbone`` itself (``feature_stages`` 0), or it reading its last ``feature_stages`` stages beside the head."""
    if not feature_stages:
        return backbone
    return StagedBackbone(backbone, tail_stages=max(0, feature_stages - 1), feature_stages=feature_stages)
