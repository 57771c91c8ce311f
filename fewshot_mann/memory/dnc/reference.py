"""A slow, literal DNC memory step, written equation by equation from the "Methods" of
Graves et al. (2016, Nature): loops over read heads and slots (and slot pairs for the
link matrix), no batching, no cumprod.

``literal_dnc_step(memory_module, h, state)`` takes the weights of a ``dnc.DNCMemory``
and its state tuple and returns what ``DNCMemory.step`` must return: the test oracle
(outputs and gradients to 1e-5). Only for tiny sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot_mann.memory.base import COSINE_EPS


def _cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D(u, v) = u . v / (|u| |v|), per batch element; u, v: (B, W) -> (B,)."""
    return (u * v).sum(-1) / (u.norm(dim=-1).clamp_min(COSINE_EPS) * v.norm(dim=-1).clamp_min(COSINE_EPS))


def _oneplus(x: torch.Tensor) -> torch.Tensor:
    return 1.0 + torch.log(1.0 + torch.exp(x))


def _content(memory: list[torch.Tensor], key: torch.Tensor, strength: torch.Tensor) -> list[torch.Tensor]:
    """C(M, k, beta)[i] = exp(D(k, M[i]) beta) / sum_j exp(D(k, M[j]) beta), as N entries (B,)."""
    scores = [torch.exp(_cosine(key, row) * strength) for row in memory]
    total = sum(scores)
    return [s / total for s in scores]


def literal_dnc_step(mem, h: torch.Tensor, state):
    """Literal DNC step with ``mem``'s (a ``dnc.DNCMemory``) weights.

    h: (B, controller_size); state as ``DNCMemory.initial_state``. Returns
    (reads (B, R*W), (memory, usage, links, precedence, read weights, write weights, reads)).
    """
    memory_t, usage_prev, links_prev, precedence_prev, w_read_prev, w_write_prev, _ = state
    B = h.shape[0]
    N, W, R = mem.memory_slots, mem.memory_width, mem.num_read_heads

    # Interface vector, sliced one field at a time.
    xi = F.linear(h, mem.interface.weight, mem.interface.bias)
    pos = 0

    def take(size):
        nonlocal pos
        out = xi[:, pos:pos + size]
        pos += size
        return out

    read_keys = [take(W) for _ in range(R)]
    read_strengths = [_oneplus(v[:, 0]) for v in [take(1) for _ in range(R)]]
    write_key = take(W)
    write_strength = _oneplus(take(1)[:, 0])
    erase = torch.sigmoid(take(W))
    write_vector = take(W)
    free_gates = [torch.sigmoid(v[:, 0]) for v in [take(1) for _ in range(R)]]
    allocation_gate = torch.sigmoid(take(1)[:, 0])
    write_gate = torch.sigmoid(take(1)[:, 0])
    read_modes = []
    for _ in range(R):
        raw = take(3)
        e = [torch.exp(raw[:, m]) for m in range(3)]
        read_modes.append([e[m] / (e[0] + e[1] + e[2]) for m in range(3)])  # backward, content, forward

    memory = [memory_t[:, i] for i in range(N)]
    # Retention and usage.
    usage = []
    for i in range(N):
        psi = torch.ones(B, dtype=h.dtype, device=h.device)
        for head in range(R):
            psi = psi * (1.0 - free_gates[head] * w_read_prev[:, head, i])
        u, ww = usage_prev[:, i], w_write_prev[:, i]
        usage.append((u + ww - u * ww) * psi)
    # Allocation: free list phi sorts slots by ascending usage (ties: lower slot first).
    usage_t = torch.stack(usage, dim=-1)
    phi = torch.sort(usage_t.detach(), dim=-1, stable=True).indices
    alloc = [[None] * N for _ in range(B)]
    for b in range(B):
        running = torch.ones((), dtype=h.dtype, device=h.device)
        for j in range(N):
            slot = int(phi[b, j])
            alloc[b][slot] = (1.0 - usage[slot][b]) * running
            running = running * usage[slot][b]
    allocation = [torch.stack([alloc[b][i] for b in range(B)]) for i in range(N)]
    # Write weighting.
    write_content = _content(memory, write_key, write_strength)
    w_write = [write_gate * (allocation_gate * allocation[i] + (1.0 - allocation_gate) * write_content[i])
               for i in range(N)]
    # Erase then write.
    memory = [memory[i] * (1.0 - w_write[i].unsqueeze(-1) * erase) + w_write[i].unsqueeze(-1) * write_vector
              for i in range(N)]
    # Temporal link matrix with the previous precedence, then the new precedence.
    links = [[None] * N for _ in range(N)]
    for i in range(N):
        for j in range(N):
            if i == j:
                links[i][j] = torch.zeros(B, dtype=h.dtype, device=h.device)
            else:
                links[i][j] = (1.0 - w_write[i] - w_write[j]) * links_prev[:, i, j] \
                    + w_write[i] * precedence_prev[:, j]
    write_total = sum(w_write)
    precedence = [(1.0 - write_total) * precedence_prev[:, i] + w_write[i] for i in range(N)]
    # Read weightings: backward, content, forward.
    read_w, reads = [], []
    for head in range(R):
        prev = [w_read_prev[:, head, j] for j in range(N)]
        forward = [sum(links[i][j] * prev[j] for j in range(N)) for i in range(N)]
        backward = [sum(links[j][i] * prev[j] for j in range(N)) for i in range(N)]
        content = _content(memory, read_keys[head], read_strengths[head])
        pi = read_modes[head]
        w = [pi[0] * backward[i] + pi[1] * content[i] + pi[2] * forward[i] for i in range(N)]
        read_w.append(torch.stack(w, dim=-1))
        reads.append(sum(w[i].unsqueeze(-1) * memory[i] for i in range(N)))

    flat_reads = torch.cat(reads, dim=-1)
    new_state = (
        torch.stack(memory, dim=1),
        usage_t,
        torch.stack([torch.stack(row, dim=-1) for row in links], dim=1),
        torch.stack(precedence, dim=-1),
        torch.stack(read_w, dim=1),
        torch.stack(w_write, dim=-1),
        flat_reads,
    )
    return flat_reads, new_state
