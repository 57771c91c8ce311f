"""The standard 4-block ConvNet of few-shot learning (Vinyals et al. 2016; Snell et al. 2017).

Four blocks of 3x3 convolution (64 channels), batch norm, ReLU and 2x2 max-pooling: a 28x28
image becomes 64 x 1 x 1, i.e. a 64-value feature vector. Used as a backbone
(``--encoder fewshot:conv4``): pretrained with a prototypical loss on the training classes
(``fewshot-mann pretrain``, engine/pretrain.py), then frozen; its features are cached and the
memory models meta-train on them, like on any other backbone's features.

Input: (N, C, S, S) in [0, 1] (minus mean, over std: the backbone preprocessing, here 0 and 1).
Colour images are averaged to one channel first, so the network is the grayscale one whatever
a folder holds. Output: (N, width * (S // 16) ** 2).
"""
from __future__ import annotations

import torch
from torch import nn

CONV4_IMAGE_SIZE = 28


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class Conv4(nn.Module):
    """(N, C, S, S) -> (N, features); C of 1 or 3 (averaged to gray)."""

    def __init__(self, width: int = 64, blocks: int = 4):
        super().__init__()
        layers, c_in = [], 1
        for _ in range(blocks):
            layers.append(conv_block(c_in, width))
            c_in = width
        self.blocks = nn.Sequential(*layers)
        self.num_features = self.output_width(CONV4_IMAGE_SIZE, width, blocks)

    @staticmethod
    def output_width(image_size: int, width: int = 64, blocks: int = 4) -> int:
        """Features of an image_size x image_size input (each block halves the map, rounding down)."""
        return width * (image_size // 2 ** blocks) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        return self.blocks(x).flatten(1)


# name -> (factory, input size): the backbones of the ``fewshot:`` library (``--encoder fewshot:NAME``)
FEWSHOT_BACKBONES = {"conv4": (Conv4, CONV4_IMAGE_SIZE)}
