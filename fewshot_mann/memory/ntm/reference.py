"""A slow, literal NTM memory step, written equation by equation from Graves, Wayne &
Danihelka (2014): loops over heads and slots, no batching of heads, no log-space tricks.

``literal_ntm_step(memory_module, h, state)`` takes the weights of an ``ntm.NTMMemory``
and its state tuple and returns what ``NTMMemory.step`` must return: the test oracle
(outputs and gradients to 1e-5). Only for tiny sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot_mann.memory.base import COSINE_EPS


def _cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """K(u, v) = u . v / (|u| |v|), per batch element; u, v: (B, W) -> (B,)."""
    return (u * v).sum(-1) / (u.norm(dim=-1).clamp_min(COSINE_EPS) * v.norm(dim=-1).clamp_min(COSINE_EPS))


def _head_weighting(p: torch.Tensor, memory: list[torch.Tensor], w_prev: list[torch.Tensor],
                    width: int, shift_range: int) -> list[torch.Tensor]:
    """Eqs. 5-9 for one head. p: (B, W+3+2S+1) the head's raw parameters; memory: N rows
    (B, W); w_prev: N entries (B,). Returns the new weighting as N entries (B,)."""
    n = len(memory)
    key = p[:, :width]
    beta = F.softplus(p[:, width])
    g = torch.sigmoid(p[:, width + 1])
    s_raw = p[:, width + 2:width + 2 + 2 * shift_range + 1]
    s = [torch.exp(s_raw[:, d]) / torch.exp(s_raw).sum(-1) for d in range(2 * shift_range + 1)]
    gamma = 1.0 + F.softplus(p[:, -1])
    # eq. 5: content weighting
    scores = [torch.exp(beta * _cosine(key, memory[i])) for i in range(n)]
    total = sum(scores)
    w_c = [scores[i] / total for i in range(n)]
    # eq. 7: interpolation with the previous weighting
    w_g = [g * w_c[i] + (1.0 - g) * w_prev[i] for i in range(n)]
    # eq. 8: circular convolution; s(d) for d = (i - j) mod N within -S..S
    w_tilde = []
    for i in range(n):
        acc = torch.zeros_like(g)
        for j in range(n):
            d = (i - j) % n
            if d <= shift_range:
                acc = acc + w_g[j] * s[shift_range + d]
            elif d >= n - shift_range:
                acc = acc + w_g[j] * s[shift_range + d - n]
        w_tilde.append(acc)
    # eq. 9: sharpening
    powered = [w_tilde[i] ** gamma for i in range(n)]
    norm = sum(powered)
    return [powered[i] / norm for i in range(n)]


def literal_ntm_step(mem, h: torch.Tensor, state):
    """Literal NTM step with ``mem``'s (an ``ntm.NTMMemory``) weights.

    h: (B, controller_size); state as ``NTMMemory.initial_state``. Returns
    (reads (B, R*W), (memory, read weights, write weights, reads)).
    """
    memory_t, w_read_prev, w_write_prev, _ = state
    n, width, s_range = mem.memory_slots, mem.memory_width, mem.shift_range
    per_head = width + 3 + 2 * s_range + 1
    memory = [memory_t[:, i] for i in range(n)]

    write_out = F.linear(h, mem.write_params.weight, mem.write_params.bias)
    write_w, erases, adds = [], [], []
    for head in range(mem.num_write_heads):
        p = write_out[:, head * (per_head + 2 * width):(head + 1) * (per_head + 2 * width)]
        prev = [w_write_prev[:, head, i] for i in range(n)]
        write_w.append(_head_weighting(p[:, :per_head], memory, prev, width, s_range))
        erases.append(torch.sigmoid(p[:, per_head:per_head + width]))
        adds.append(torch.tanh(p[:, per_head + width:]))
    # eq. 3: erase with every write head (multiplications commute), eq. 4: then add.
    erased = []
    for i in range(n):
        row = memory[i]
        for head in range(mem.num_write_heads):
            row = row * (1.0 - write_w[head][i].unsqueeze(-1) * erases[head])
        erased.append(row)
    memory = []
    for i in range(n):
        row = erased[i]
        for head in range(mem.num_write_heads):
            row = row + write_w[head][i].unsqueeze(-1) * adds[head]
        memory.append(row)

    read_out = F.linear(h, mem.read_params.weight, mem.read_params.bias)
    read_w, reads = [], []
    for head in range(mem.num_read_heads):
        p = read_out[:, head * per_head:(head + 1) * per_head]
        prev = [w_read_prev[:, head, i] for i in range(n)]
        w = _head_weighting(p, memory, prev, width, s_range)
        read_w.append(w)
        reads.append(sum(w[i].unsqueeze(-1) * memory[i] for i in range(n)))  # eq. 2

    memory_t = torch.stack(memory, dim=1)
    w_read = torch.stack([torch.stack(w, dim=-1) for w in read_w], dim=1)
    w_write = torch.stack([torch.stack(w, dim=-1) for w in write_w], dim=1)
    flat_reads = torch.cat(reads, dim=-1)
    return flat_reads, (memory_t, w_read, w_write, flat_reads)
