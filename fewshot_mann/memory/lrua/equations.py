"""External memories behind one interface; here the LRUA memory of Santoro et al. 2016.

Interface (every memory module):

- ``initial_state(batch, device, dtype)`` -> state (a tuple of tensors); the memory is
  created fresh for every episode and never outlives it.
- ``step(h, state)`` -> ``(read, new_state)`` with ``h: (batch, controller_size)`` the
  controller output of this step and ``read: (batch, read_size)`` the concatenated reads,
  fed back to the controller at the next step and to the output layer now.

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

Initial state: memory rows 1e-6 (cosine similarity is undefined for zero rows), read
weights, usage and reads zero.
"""
from __future__ import annotations

import torch
from torch import nn

COSINE_EPS = 1e-8
MEMORY_INIT = 1e-6


def least_used(usage: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n-hot of the n least-used slots and one-hot of the single least-used slot.

    usage: (batch, slots). Ties broken by lower slot index. Returns two float tensors
    of shape (batch, slots).
    """
    order = torch.sort(usage, dim=-1, stable=True).indices[:, :n]
    w_lu = torch.zeros_like(usage).scatter_(1, order, 1.0)
    zero = torch.zeros_like(usage).scatter_(1, order[:, :1], 1.0)
    return w_lu, zero


class LRUAMemory(nn.Module):
    """Santoro et al. (2016) memory with LRUA writing. See the module docstring."""

    def __init__(self, controller_size: int, memory_slots: int = 128, memory_width: int = 40,
                 num_read_heads: int = 4, usage_decay: float = 0.95, key_strength: bool = False):
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

    @property
    def read_size(self) -> int:
        return self.num_read_heads * self.memory_width

    def initial_state(self, batch: int, device=None, dtype=torch.float32):
        """(memory (B,N,W), read weights (B,R,N), usage (B,N), w_lu (B,N), zero mask (B,N), reads (B,R*W))."""
        n, w, r = self.memory_slots, self.memory_width, self.num_read_heads
        memory = torch.full((batch, n, w), MEMORY_INIT, device=device, dtype=dtype)
        w_read = torch.zeros(batch, r, n, device=device, dtype=dtype)
        usage = torch.zeros(batch, n, device=device, dtype=dtype)
        w_lu, zero = least_used(usage, r)
        reads = torch.zeros(batch, r * w, device=device, dtype=dtype)
        return memory, w_read, usage, w_lu, zero, reads

    def step(self, h: torch.Tensor, state):
        """One LRUA step. h: (B, controller_size). Returns (reads (B, R*W), new state)."""
        memory, w_read_prev, usage, w_lu_prev, zero_prev, _ = state
        batch = h.shape[0]
        r, w = self.num_read_heads, self.memory_width
        keys = torch.tanh(self.key(h)).view(batch, r, w)  # (B,R,W)
        alpha = torch.sigmoid(self.gate(h)).unsqueeze(-1)  # (B,R,1)
        w_write = alpha * w_read_prev + (1.0 - alpha) * w_lu_prev.unsqueeze(1)  # (B,R,N)
        memory = memory * (1.0 - zero_prev).unsqueeze(-1) + torch.bmm(w_write.transpose(1, 2), keys)
        # Cosine similarity with rows and keys normalised once per step.
        k_hat = keys / keys.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        m_hat = memory / memory.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        similarity = torch.bmm(k_hat, m_hat.transpose(1, 2))  # (B,R,N)
        if self.strength is not None:
            beta = 1.0 + nn.functional.softplus(self.strength(h)).unsqueeze(-1)
            similarity = similarity * beta
        w_read = torch.softmax(similarity, dim=-1)
        reads = torch.bmm(w_read, memory).reshape(batch, r * w)
        with torch.no_grad():
            usage = self.usage_decay * usage + w_read.sum(1) + w_write.sum(1)
            w_lu, zero = least_used(usage, r)
        return reads, (memory, w_read, usage, w_lu, zero, reads)
