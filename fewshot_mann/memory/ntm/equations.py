"""The Neural Turing Machine memory (Graves, Wayne & Danihelka 2014), behind the memory
interface of ``memory.py`` (``initial_state``, ``step``, ``read_size``).

Per step t, with ``h: (batch, controller_size)`` the controller output, every head (read
heads and write heads alike, heads as a tensor dimension) emits from one linear layer:

- key ``k`` (unconstrained; cosine similarity ignores its scale), key strength
  ``beta = softplus(.) >= 0``, interpolation gate ``g = sigmoid(.)``, shift weights
  ``s = softmax(.)`` over the ``2 * shift_range + 1`` shifts ``-S..+S``, sharpening
  ``gamma = 1 + softplus(.) >= 1``;
- write heads also an erase vector ``e = sigmoid(.)`` and an add vector ``a = tanh(.)``
  (the paper leaves ``a`` unconstrained; tanh keeps memory contents bounded, as this
  project's LRUA keys are).

Addressing (paper section 3.3, eqs. 5-9), per head:

- content (eq. 5): ``w_c(i) = softmax_i(beta * K(k, M(i)))``, K the cosine similarity;
- interpolation (eq. 7): ``w_g = g * w_c + (1 - g) * w_{t-1}``;
- circular shift (eq. 8): ``w~(i) = sum_{d=-S..S} s(d) * w_g((i - d) mod N)``;
- sharpening (eq. 9): ``w(i) = w~(i)^gamma / sum_j w~(j)^gamma``, computed as
  ``softmax(gamma * log w~)`` so a large gamma cannot underflow every term to 0/0.

Order within a step (as the LRUA and DNC memories here): write heads address the memory
of the previous step ``M_{t-1}`` and write (erase, then add; eqs. 3-4, all write heads
together: ``M'(i) = M_{t-1}(i) * prod_h (1 - w_h(i) e_h)``, ``M_t(i) = M'(i) + sum_h
w_h(i) a_h``); then read heads address ``M_t`` and read ``r = sum_i w(i) M_t(i)`` (eq. 2),
so the read of step t can already see step t's write.

Initial state (fresh every episode): memory rows all ``MEMORY_INIT`` (cosine similarity
is undefined for zero rows), every head's previous weighting one-hot on slot 0 and the
reads zero. All rows start equal, so content addressing alone could never tell slots
apart; the focused start lets location addressing (gate and shift) walk to new slots.

Linear layout, one row of parameters per head (the literal reference relies on it):
read heads ``[key (W) | beta | g | s (2S+1) | gamma]``; write heads the same followed by
``[erase (W) | add (W)]``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fewshot_mann.memory.addressing import cosine_similarity
from fewshot_mann.memory.base import MEMORY_INIT, Memory

# Floor under the shifted weighting before its log: a weight that underflowed to 0 stays
# (almost) 0 after sharpening instead of producing -inf * gamma and NaN gradients.
LOG_FLOOR = 1e-30


def addressing_size(memory_width: int, shift_range: int) -> int:
    """Parameters one head needs for addressing: key, beta, g, shift weights, gamma."""
    return memory_width + 3 + 2 * shift_range + 1


def shift_index(memory_slots: int, shift_range: int, device=None) -> torch.Tensor:
    """(2S+1, N) long: row d holds ``(i - shift) mod N`` for shift = d - S, slot i
    (``gated[..., shift_index(N, S)]`` is every shifted copy: what ``circular_shift`` weights)."""
    shifts = torch.arange(-shift_range, shift_range + 1, device=device)
    slots = torch.arange(memory_slots, device=device)
    return (slots.unsqueeze(0) - shifts.unsqueeze(1)) % memory_slots


def address(params: torch.Tensor, memory: torch.Tensor, w_prev: torch.Tensor, memory_width: int) -> torch.Tensor:
    """NTM addressing (eqs. 5-9) of every head at once.

    params: (B, heads, W + 3 + 2S + 1) in the layout of the module docstring;
    memory: (B, N, W); w_prev: (B, heads, N).
    Returns the new weightings (B, heads, N), each summing to 1 over the slots.
    """
    w = memory_width
    key = params[..., :w]
    beta = F.softplus(params[..., w:w + 1])
    gate = torch.sigmoid(params[..., w + 1:w + 2])
    shift = torch.softmax(params[..., w + 2:-1], dim=-1)  # (B, heads, 2S+1)
    gamma = 1.0 + F.softplus(params[..., -1:])
    content = torch.softmax(beta * cosine_similarity(key, memory), dim=-1)
    gated = torch.lerp(w_prev, content, gate)  # g * w_c + (1 - g) * w_prev
    shifted = circular_shift(gated, shift)
    return torch.softmax(gamma * shifted.clamp_min(LOG_FLOOR).log(), dim=-1)


def circular_shift(gated: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``out(i) = sum_{d=-S..S} s(d) * gated((i - d) mod N)``.

    gated (B, heads, N), shift (B, heads, 2S+1) the weights of shifts -S..S -> (B, heads, N).
    The circularly padded weighting ``[gated(N-S..N-1) | gated | gated(0..S-1)]`` seen
    through ``unfold`` (a view, no copy) holds at [i, k] ``gated(i + k - S)``, the term of
    shift d = S - k; so it is weighted by the shift weights in reverse order. (An index
    gather ``gated[..., shift_index(N, S)]`` is the same, but its backward is a slow
    scatter-add.)
    """
    s_range = (shift.shape[-1] - 1) // 2
    if s_range == 0:
        return gated * shift
    return (shift_windows(gated, s_range) * shift.flip(-1).unsqueeze(-2)).sum(dim=-1)


def shift_windows(x: torch.Tensor, s_range: int) -> torch.Tensor:
    """x (B, heads, N) -> (B, heads, N, 2S+1) view of the circularly padded x: [i, k] = x((i + k - S) mod N)."""
    padded = torch.cat([x[..., x.shape[-1] - s_range:], x, x[..., :s_range]], dim=-1)
    return padded.unfold(-1, 2 * s_range + 1, 1)


def erase_and_add(memory: torch.Tensor, w_write: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """Eqs. 3-4 for all write heads: memory (B, N, W), w_write (B, Hw, N), erase and add
    (B, Hw, W) -> ``M * prod_h (1 - w_h e_h^T) + sum_h w_h a_h^T``.

    One head (the usual case) as ``M + w (a - M e)``: two passes over the memory, and no
    product over a head dimension of one (whose backward is many more).
    """
    if w_write.shape[1] == 1:
        change = torch.addcmul(add, memory, erase, value=-1.0)  # a - M e, (B,N,W)
        return torch.addcmul(memory, w_write.transpose(1, 2), change)
    keep = 1.0 - w_write[:, 0].unsqueeze(-1) * erase[:, :1]
    for head in range(1, w_write.shape[1]):
        keep = keep * (1.0 - w_write[:, head].unsqueeze(-1) * erase[:, head:head + 1])
    return torch.baddbmm(memory * keep, w_write.transpose(1, 2), add)


class NTMMemory(Memory):
    """The NTM memory: content + location addressing, erase/add writes. See the module docstring."""

    def __init__(self, controller_size: int, memory_slots: int = 128, memory_width: int = 40,
                 num_read_heads: int = 4, num_write_heads: int = 1, shift_range: int = 1):
        super().__init__()
        if 2 * shift_range + 1 > memory_slots:
            raise ValueError(f"shift range {shift_range} spans more than {memory_slots} slots")
        self.controller_size = controller_size
        self.memory_slots = memory_slots
        self.memory_width = memory_width
        self.num_read_heads = num_read_heads
        self.num_write_heads = num_write_heads
        self.shift_range = shift_range
        per_head = addressing_size(memory_width, shift_range)
        self.read_params = nn.Linear(controller_size, num_read_heads * per_head)
        self.write_params = nn.Linear(controller_size, num_write_heads * (per_head + 2 * memory_width))

    @property
    def implementations(self) -> tuple[str, ...]:
        """``sequence`` (sequence.NTMStep, a hand-written backward) covers one write head."""
        return ("autograd", "sequence") if self.num_write_heads == 1 else ("autograd",)

    @property
    def read_size(self) -> int:
        return self.num_read_heads * self.memory_width

    def initial_state(self, batch: int, device=None, dtype=torch.float32):
        """(memory (B,N,W), read weights (B,R,N), write weights (B,Hw,N), reads (B,R*W))."""
        n, w = self.memory_slots, self.memory_width
        memory = torch.full((batch, n, w), MEMORY_INIT, device=device, dtype=dtype)
        w_read = torch.zeros(batch, self.num_read_heads, n, device=device, dtype=dtype)
        w_read[..., 0] = 1.0
        w_write = torch.zeros(batch, self.num_write_heads, n, device=device, dtype=dtype)
        w_write[..., 0] = 1.0
        reads = torch.zeros(batch, self.num_read_heads * w, device=device, dtype=dtype)
        return memory, w_read, w_write, reads

    def step(self, h: torch.Tensor, state):
        """One NTM step. h: (B, controller_size). Returns (reads (B, R*W), new state)."""
        memory, w_read_prev, w_write_prev, _ = state
        batch, w = h.shape[0], self.memory_width
        write = self.write_params(h).view(batch, self.num_write_heads, -1)
        w_write = address(write[..., :-2 * w], memory, w_write_prev, w)  # (B,Hw,N)
        erase = torch.sigmoid(write[..., -2 * w:-w])  # (B,Hw,W)
        add = torch.tanh(write[..., -w:])
        memory = erase_and_add(memory, w_write, erase, add)
        read = self.read_params(h).view(batch, self.num_read_heads, -1)
        w_read = address(read, memory, w_read_prev, w)  # (B,R,N)
        reads = torch.bmm(w_read, memory).reshape(batch, -1)
        return reads, (memory, w_read, w_write, reads)
