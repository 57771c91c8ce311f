"""The LRUA memory of Santoro et al. 2016 ("Meta-Learning with Memory-Augmented Neural
Networks"), as the paper's verbs: small autograd functions, one per equation, and the
module that composes them into one step (the memory interface of ``memory/base.py``).

LRUA (Least-Recently-Used Access), per step t, heads as a tensor dimension:

- keys ``k_t = tanh(W_k h_t)``, one per read head; write gate ``alpha_t = W_a h_t``.
- write weights (eq. 7): ``w_w(t) = sigmoid(alpha) * w_r(t-1) + (1 - sigmoid(alpha)) * w_lu(t-1)``.
- before writing, the least-used slot (smallest ``w_u(t-1)``) is set to zero; then
  ``M_t(i) = M_{t-1}(i) + sum_heads w_w(t)(i) k_t`` (eq. 8).
- read weights (eqs. 2-3): ``w_r(t) = softmax_i(K(k_t, M_t(i)))`` with cosine similarity K;
  reads ``r_t = sum_i w_r(t)(i) M_t(i)`` (eq. 4).
- usage (eq. 5): ``w_u(t) = gamma * w_u(t-1) + sum_heads (w_r(t) + w_w(t))``.
- least-used weights (eq. 6): n-hot over the n slots of smallest ``w_u(t)``, n = read heads.
  Ties (untouched slots have equal usage) go to the lower slot index, so the choice is
  deterministic; usage carries no gradient (it only picks slots).

Extension (``write_vector``, not in the paper): the memory is written with its own vector
``v_t = tanh(W_v h_t)`` in eq. 8 instead of the read key ``k_t``, so what a step stores (e.g. the
previous image with the label that arrived for it) need not be what it looks up (the image of
this step); autograd and sequence.py (not the C++ kernel).

Initial state: memory rows ``MEMORY_INIT`` (cosine similarity is undefined for zero rows),
read weights, usage and reads zero.

The same mathematics runs faster in ``sequence.py`` (the whole recurrence with a
hand-written backward) and ``kernel.py`` (the same in C++); ``reference.py`` is the literal
oracle they are all tested against.
"""
from __future__ import annotations

import torch
from torch import nn

from fewshot_mann.memory.base import COSINE_EPS, MEMORY_INIT, Memory

__all__ = ["COSINE_EPS", "MEMORY_INIT", "LRUAMemory", "least_used", "write_weights", "write", "read", "usage"]


def least_used(usage: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: the n-hot of the n least-used slots (``w_lu``) and the one-hot of the single
    least-used slot (the row ``write`` zeroes).

    usage: (batch, slots). Ties broken by lower slot index (a stable sort). Returns two
    float tensors of shape (batch, slots).
    """
    order = torch.sort(usage, dim=-1, stable=True).indices[:, :n]
    w_lu = torch.zeros_like(usage).scatter_(1, order, 1.0)
    zero = torch.zeros_like(usage).scatter_(1, order[:, :1], 1.0)
    return w_lu, zero


def write_weights(alpha: torch.Tensor, w_read_prev: torch.Tensor, w_lu_prev: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``w_w = sigmoid(alpha) w_r(t-1) + (1 - sigmoid(alpha)) w_lu(t-1)``.

    alpha: (B, R, 1) the gate after its sigmoid; w_read_prev: (B, R, N); w_lu_prev: (B, N).
    Returns (B, R, N).
    """
    return alpha * w_read_prev + (1.0 - alpha) * w_lu_prev.unsqueeze(1)


def write(memory: torch.Tensor, zero: torch.Tensor, w_write: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Eq. 8: zero the least-used row, then ``M_t(i) = M_{t-1}(i) + sum_heads w_w(i) k``.

    memory: (B, N, W); zero: (B, N) one-hot of the row to zero; w_write: (B, R, N);
    keys: (B, R, W). Returns the new memory (B, N, W).
    """
    return memory * (1.0 - zero).unsqueeze(-1) + torch.bmm(w_write.transpose(1, 2), keys)


def read(memory: torch.Tensor, keys: torch.Tensor, beta: torch.Tensor | None = None):
    """Eqs. 2-4: read weights ``w_r = softmax_i(K(k, M(i)))`` (K the cosine similarity, times
    ``beta`` with the key-strength extension) and reads ``r = sum_i w_r(i) M(i)``.

    memory: (B, N, W); keys: (B, R, W); beta: (B, R, 1) or None. Returns
    (read weights (B, R, N), reads (B, R*W)). Rows and keys are normalised once per step.
    """
    k_hat = keys / keys.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
    m_hat = memory / memory.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
    similarity = torch.bmm(k_hat, m_hat.transpose(1, 2))  # (B,R,N)
    if beta is not None:
        similarity = similarity * beta
    w_read = torch.softmax(similarity, dim=-1)
    return w_read, torch.bmm(w_read, memory).flatten(1)


def usage(usage_prev: torch.Tensor, w_read: torch.Tensor, w_write: torch.Tensor, decay: float) -> torch.Tensor:
    """Eq. 5: ``w_u(t) = gamma w_u(t-1) + sum_heads (w_r(t) + w_w(t))``. (B, N) from
    usage_prev (B, N) and the weights (B, R, N)."""
    return decay * usage_prev + w_read.sum(1) + w_write.sum(1)


class LRUAMemory(Memory):
    """Santoro et al. (2016) memory with LRUA writing. See the module docstring."""

    implementations = ("autograd", "sequence", "kernel")

    def __init__(self, controller_size: int, memory_slots: int = 128, memory_width: int = 40,
                 num_read_heads: int = 4, usage_decay: float = 0.95, key_strength: bool = False,
                 write_vector: bool = False, reads_input: bool = False):
        super().__init__()
        self.controller_size = controller_size
        self.memory_slots = memory_slots
        self.memory_width = memory_width
        self.num_read_heads = num_read_heads
        self.usage_decay = usage_decay
        self.key_strength = key_strength
        self.key = nn.Linear(controller_size, num_read_heads * memory_width)
        self.gate = nn.Linear(controller_size, num_read_heads)
        # Extension (off by default, not in the paper): beta = 1 + softplus(W_b h) scales
        # the cosine similarities so reads can be sharper than softmax over [-1, 1].
        self.strength = nn.Linear(controller_size, num_read_heads) if key_strength else None
        # Extension (off by default): the written vector v = tanh(W_v h), apart from the read key
        self.content = nn.Linear(controller_size, num_read_heads * memory_width) if write_vector else None
        # the C++ kernel writes the keys and feeds the interface h alone (``reads_input``: MANN's --memory-input
        # widens it to [h_t, step input]); sequence.py has both extensions
        if write_vector or reads_input:
            self.implementations = ("autograd", "sequence")

    @property
    def read_size(self) -> int:
        return self.num_read_heads * self.memory_width

    def initial_state(self, batch: int, device=None, dtype=torch.float32):
        """(memory (B,N,W), read weights (B,R,N), usage (B,N), w_lu (B,N), zero mask (B,N), reads (B,R*W))."""
        n, w, r = self.memory_slots, self.memory_width, self.num_read_heads
        memory = torch.full((batch, n, w), MEMORY_INIT, device=device, dtype=dtype)
        w_read = torch.zeros(batch, r, n, device=device, dtype=dtype)
        usage_ = torch.zeros(batch, n, device=device, dtype=dtype)
        w_lu, zero = least_used(usage_, r)
        reads = torch.zeros(batch, r * w, device=device, dtype=dtype)
        return memory, w_read, usage_, w_lu, zero, reads

    def step(self, h: torch.Tensor, state):
        """One LRUA step. h: (B, controller_size). Returns (reads (B, R*W), new state)."""
        memory, w_read_prev, usage_prev, w_lu_prev, zero_prev, _ = state
        batch = h.shape[0]
        keys = torch.tanh(self.key(h)).view(batch, self.num_read_heads, self.memory_width)  # (B,R,W)
        alpha = torch.sigmoid(self.gate(h)).unsqueeze(-1)  # (B,R,1)
        w_write = write_weights(alpha, w_read_prev, w_lu_prev)
        written = keys if self.content is None else torch.tanh(self.content(h)).view_as(keys)
        memory = write(memory, zero_prev, w_write, written)
        beta = None
        if self.strength is not None:
            beta = 1.0 + nn.functional.softplus(self.strength(h)).unsqueeze(-1)
        w_read, reads = read(memory, keys, beta)
        with torch.no_grad():
            usage_now = usage(usage_prev, w_read, w_write, self.usage_decay)
            w_lu, zero = least_used(usage_now, self.num_read_heads)
        return reads, (memory, w_read, usage_now, w_lu, zero, reads)
