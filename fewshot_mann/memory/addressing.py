"""Content addressing shared by the memories: cosine similarity, forward and backward.

``cosine_similarity`` is the autograd form (the NTM and DNC equations use it); the rest
are the pieces of its hand-written gradient that the NTM and DNC ``sequence.py`` steps
share.
"""
from __future__ import annotations

import torch

from fewshot_mann.memory.base import COSINE_EPS


def cosine_similarity(keys: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """keys (B, heads, W), memory (B, N, W) -> (B, heads, N) cosine similarities K(k, M(i)).

    The rows' norms divide the (B, heads, N) products, not the (B, N, W) memory: the same
    numbers (up to rounding) without building, or backpropagating through, ``M / |M|``.
    """
    k_hat = keys / keys.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
    inv_norm = memory.norm(dim=-1).clamp_min(COSINE_EPS).reciprocal()  # (B, N)
    return torch.bmm(k_hat, memory.transpose(1, 2)) * inv_norm.unsqueeze(1)


def inv_norms(memory: torch.Tensor):
    """memory (B, N, W) -> (1 / max(|M_i|, eps) (B, N), mask |M_i| > eps (B, N))."""
    norm = memory.norm(dim=-1)
    return norm.clamp_min(COSINE_EPS).reciprocal(), norm > COSINE_EPS


def unit(key: torch.Tensor):
    """key (B, H, W) -> (key / max(|key|, eps), |key| (B, H, 1))."""
    key_norm = key.norm(dim=-1, keepdim=True)
    return key / key_norm.clamp_min(COSINE_EPS), key_norm


def softmax_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Through out = softmax(z) over the last dimension: dL/dz."""
    return out * (grad - (out * grad).sum(-1, keepdim=True))


def key_grad(g_k_hat: torch.Tensor, k_hat: torch.Tensor, key_norm: torch.Tensor) -> torch.Tensor:
    """Through k_hat = key / max(|key|, eps)."""
    inv = key_norm.clamp_min(COSINE_EPS).reciprocal()
    radial = (g_k_hat * k_hat).sum(-1, keepdim=True) * k_hat * (key_norm > COSINE_EPS)
    return (g_k_hat - radial) * inv
