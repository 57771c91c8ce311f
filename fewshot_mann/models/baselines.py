"""The paper's baselines without an external memory: an LSTM and a feed-forward network.

Same interface as every model: ``model(images (B,T,C,H,W), label_inputs (B,T,L)) -> logits
(B,T,L)``; ``features`` is what the output layer reads (``knn --layer controller``).
"""
from __future__ import annotations

import torch
from torch import nn

from fewshot_mann.config import Config
from fewshot_mann.models.encoders import build_encoder
from fewshot_mann.models.mann import init_forget_gate_bias


class LSTMBaseline(nn.Module):
    """The paper's LSTM baseline: no external memory."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder = build_encoder(cfg)
        hidden = cfg.model.controller_size
        self.lstm = nn.LSTM(self.encoder.out_features + cfg.episodes.label_size, hidden, batch_first=True)
        self.output = nn.Linear(hidden, cfg.episodes.label_size)
        init_forget_gate_bias(self.lstm.bias_ih_l0, hidden)

    def features(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        """The LSTM's outputs (B,T,hidden)."""
        out, _ = self.lstm(torch.cat([self.encoder(images), label_inputs], dim=-1))
        return out

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(images, label_inputs))


class FeedForward(nn.Module):
    """The paper's feed-forward baseline: sees only the current step (at chance by design)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder = build_encoder(cfg)
        hidden = cfg.model.controller_size
        self.net = nn.Sequential(
            nn.Linear(self.encoder.out_features + cfg.episodes.label_size, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, cfg.episodes.label_size),
        )

    def features(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (B,T,hidden): what the output layer (``net[-1]``) reads."""
        return self.net[:-1](torch.cat([self.encoder(images), label_inputs], dim=-1))

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        return self.net[-1](self.features(images, label_inputs))
