"""The Differentiable Neural Computer memory (Graves et al. 2016, Nature, "Methods"),
behind the memory interface of ``memory/base.py`` (``initial_state``, ``step``, ``read_size``).

One write head and R read heads (heads as a tensor dimension). Per step t the controller
output ``h: (batch, controller_size)`` gives, through one linear layer, the interface
vector (layout, which the literal reference relies on):

``[read keys (R*W) | read strengths (R) | write key (W) | write strength (1) |
erase (W) | write vector (W) | free gates (R) | allocation gate (1) | write gate (1) |
read modes (3R)]``

squashed as in the paper: strengths ``oneplus(x) = 1 + softplus(x)``, erase, free and
the two gates ``sigmoid``, read modes a softmax over (backward, content, forward) per
head; keys and the write vector unconstrained.

Dynamic memory allocation:

- retention ``psi_t = prod_i (1 - f_t^i * w^{r,i}_{t-1})``;
- usage ``u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t``;
- allocation ``a_t[phi_j] = (1 - u_t[phi_j]) * prod_{i<j} u_t[phi_i]``, phi the slots
  sorted by ascending usage (stable sort: ties go to the lower slot, so a fresh memory
  allocates slot 0, 1, 2, ...). As in the paper the gradient ignores the sort's
  discontinuities: the permutation is a constant, the cumulative product carries it.

Writing: ``c^w = C(M_{t-1}, k^w, beta^w)`` (softmax of strength * cosine similarity),
``w^w_t = g^w (g^a a_t + (1 - g^a) c^w)``, ``M_t = M_{t-1} * (1 - w^w e^T) + w^w v^T``.

Temporal links: ``L_t[i,j] = (1 - w^w[i] - w^w[j]) L_{t-1}[i,j] + w^w[i] p_{t-1}[j]``
with a zero diagonal; precedence ``p_t = (1 - sum_i w^w[i]) p_{t-1} + w^w``.

Reading (after the write, from ``M_t``): forward ``f^i = L_t w^{r,i}_{t-1}``, backward
``b^i = L_t^T w^{r,i}_{t-1}``, content ``c^{r,i} = C(M_t, k^{r,i}, beta^{r,i})``,
``w^{r,i}_t = pi^i_1 b^i + pi^i_2 c^i + pi^i_3 f^i``, reads ``r^i = M_t^T w^{r,i}_t``.

Initial state (fresh every episode): memory rows all ``MEMORY_INIT`` (cosine similarity
is undefined for zero rows); usage, links, precedence, weightings and reads zero.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fewshot_mann.memory.addressing import cosine_similarity
from fewshot_mann.memory.base import MEMORY_INIT, Memory

READ_MODES = 3  # backward, content, forward


def interface_size(memory_width: int, num_read_heads: int) -> int:
    """Length of the interface vector (module docstring layout)."""
    return num_read_heads * memory_width + 3 * memory_width + 5 * num_read_heads + 3


def oneplus(x: torch.Tensor) -> torch.Tensor:
    return 1.0 + F.softplus(x)


def allocation(usage: torch.Tensor) -> torch.Tensor:
    """Allocation weighting from usage (B, N) -> (B, N); sums to at most 1.

    Slots sorted by ascending usage (stable, so ties go to the lower slot); the sort
    indices are constants, the gradient flows through the gathered usage and cumprod.
    """
    order = torch.sort(usage.detach(), dim=-1, stable=True).indices
    sorted_usage = usage.gather(-1, order)
    ones = torch.ones_like(sorted_usage[..., :1])
    # Exclusive cumulative product: prod_{i<j} u[phi_i].
    before = torch.cumprod(torch.cat([ones, sorted_usage[..., :-1]], dim=-1), dim=-1)
    return torch.zeros_like(usage).scatter(-1, order, (1.0 - sorted_usage) * before)


def content_weights(keys: torch.Tensor, strengths: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """C(M, k, beta): keys (B, heads, W), strengths (B, heads, 1), memory (B, N, W) -> (B, heads, N)."""
    return torch.softmax(strengths * cosine_similarity(keys, memory), dim=-1)


class DNCMemory(Memory):
    """The DNC memory: allocation by usage, temporal links, three read modes. See the module docstring."""

    def __init__(self, controller_size: int, memory_slots: int = 128, memory_width: int = 40,
                 num_read_heads: int = 4):
        super().__init__()
        self.controller_size = controller_size
        self.memory_slots = memory_slots
        self.memory_width = memory_width
        self.num_read_heads = num_read_heads
        self.interface = nn.Linear(controller_size, interface_size(memory_width, num_read_heads))

    implementations = ("autograd", "sequence")  # sequence: sequence.DNCStep, a hand-written backward

    @property
    def read_size(self) -> int:
        return self.num_read_heads * self.memory_width

    def initial_state(self, batch: int, device=None, dtype=torch.float32):
        """(memory (B,N,W), usage (B,N), links (B,N,N), precedence (B,N),
        read weights (B,R,N), write weights (B,N), reads (B,R*W))."""
        n, w, r = self.memory_slots, self.memory_width, self.num_read_heads
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        memory = torch.full((batch, n, w), MEMORY_INIT, device=device, dtype=dtype)
        return memory, zeros(batch, n), zeros(batch, n, n), zeros(batch, n), zeros(batch, r, n), \
            zeros(batch, n), zeros(batch, r * w)

    def split_interface(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The squashed interface vector of ``h`` (B, controller_size), by name."""
        b, r, w = h.shape[0], self.num_read_heads, self.memory_width
        sizes = [r * w, r, w, 1, w, w, r, 1, 1, READ_MODES * r]
        (read_keys, read_strengths, write_key, write_strength, erase, write_vector,
         free_gates, allocation_gate, write_gate, read_modes) = self.interface(h).split(sizes, dim=-1)
        return {
            "read_keys": read_keys.view(b, r, w),
            "read_strengths": oneplus(read_strengths).unsqueeze(-1),  # (B,R,1)
            "write_key": write_key.unsqueeze(1),  # (B,1,W)
            "write_strength": oneplus(write_strength).unsqueeze(-1),  # (B,1,1)
            "erase": torch.sigmoid(erase),
            "write_vector": write_vector,
            "free_gates": torch.sigmoid(free_gates),  # (B,R)
            "allocation_gate": torch.sigmoid(allocation_gate),  # (B,1)
            "write_gate": torch.sigmoid(write_gate),
            "read_modes": torch.softmax(read_modes.view(b, r, READ_MODES), dim=-1),  # (B,R,3)
        }

    def step(self, h: torch.Tensor, state):
        """One DNC step. h: (B, controller_size). Returns (reads (B, R*W), new state)."""
        memory, usage, links, precedence, w_read_prev, w_write_prev, _ = state
        batch = h.shape[0]
        x = self.split_interface(h)
        retention = (1.0 - x["free_gates"].unsqueeze(-1) * w_read_prev).prod(dim=1)  # (B,N)
        usage = (usage + w_write_prev - usage * w_write_prev) * retention
        content = content_weights(x["write_key"], x["write_strength"], memory).squeeze(1)  # (B,N)
        g_a = x["allocation_gate"]
        w_write = x["write_gate"] * (g_a * allocation(usage) + (1.0 - g_a) * content)
        # M (1 - w e^T) + w v^T as M + w (v - M e): two passes over the memory.
        change = torch.addcmul(x["write_vector"].unsqueeze(1), memory, x["erase"].unsqueeze(1), value=-1.0)
        memory = torch.addcmul(memory, w_write.unsqueeze(-1), change)
        links = torch.baddbmm((1.0 - w_write.unsqueeze(-1) - w_write.unsqueeze(1)) * links,
                              w_write.unsqueeze(-1), precedence.unsqueeze(1))
        links.diagonal(dim1=1, dim2=2).zero_()  # in place: nothing saved for backward reads it
        forward = torch.bmm(w_read_prev, links.transpose(1, 2))  # (B,R,N): (L w)[i]
        backward = torch.bmm(w_read_prev, links)  # (L^T w)[i]
        precedence = (1.0 - w_write.sum(-1, keepdim=True)) * precedence + w_write
        content = content_weights(x["read_keys"], x["read_strengths"], memory)
        modes = x["read_modes"]
        w_read = modes[..., 0:1] * backward + modes[..., 1:2] * content + modes[..., 2:3] * forward
        reads = torch.bmm(w_read, memory).reshape(batch, -1)
        return reads, (memory, usage, links, precedence, w_read, w_write, reads)
