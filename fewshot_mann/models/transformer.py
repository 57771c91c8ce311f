"""A small causal transformer over the label-shifted episode, with no external memory:
its "memory" is attention over the earlier steps of the same episode.

Same interface as the other models: ``model(images (B,T,C,H,W), label_inputs (B,T,L))
-> logits (B,T,L)``. Step t's token is ``Linear([features(x_t), y_{t-1}])`` plus a learned
position embedding (up to ``transformer_max_steps`` steps); pre-norm blocks (GPT-2 style:
``x + attn(ln(x))``, ``x + mlp(ln(x))``, MLP width 4x, GELU, no dropout); a causal mask,
so step t attends to steps 0..t only and the label of step t (an input at t+1) can never
reach the answer of step t.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fewshot_mann.config import Config
from fewshot_mann.errors import UserError
from fewshot_mann.models.encoders import build_encoder


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, heads as a tensor dimension. x: (B, T, width) -> (B, T, width)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, d/heads)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerBaseline(nn.Module):
    """Causal transformer over [features(x_t), y_{t-1}] tokens. See the module docstring."""

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.encoder = build_encoder(cfg)
        self.max_steps = m.transformer_max_steps
        self.embed = nn.Linear(self.encoder.out_features + cfg.episodes.label_size, m.transformer_width)
        self.position = nn.Embedding(m.transformer_max_steps, m.transformer_width)
        self.blocks = nn.ModuleList(Block(m.transformer_width, m.transformer_heads)
                                    for _ in range(m.transformer_layers))
        self.ln_final = nn.LayerNorm(m.transformer_width)
        self.output = nn.Linear(m.transformer_width, cfg.episodes.label_size)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(images, label_inputs))

    def features(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        """The last block's normalised outputs (B,T,width): what the output layer reads."""
        steps = images.shape[1]
        if steps > self.max_steps:
            raise UserError(f"an episode of {steps} steps is longer than the transformer's "
                            f"--transformer-max-steps {self.max_steps}; retrain with a larger value")
        x = self.embed(torch.cat([self.encoder(images), label_inputs], dim=-1))
        x = x + self.position.weight[:steps]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)
