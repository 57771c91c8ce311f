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


def _interface(mem, h: torch.Tensor) -> dict:
    """The interface vector xi = W_xi h + b, sliced one field at a time (``equations.py``'s
    layout) and squashed: strengths oneplus, erase and gates sigmoid, read modes a softmax."""
    R, W = mem.num_read_heads, mem.memory_width
    xi = F.linear(h, mem.interface.weight, mem.interface.bias)
    pos = 0

    def take(size):
        nonlocal pos
        out = xi[:, pos:pos + size]
        pos += size
        return out

    fields = dict(read_keys=[take(W) for _ in range(R)],
                  read_strengths=[_oneplus(v[:, 0]) for v in [take(1) for _ in range(R)]],
                  write_key=take(W),
                  write_strength=_oneplus(take(1)[:, 0]),
                  erase=torch.sigmoid(take(W)),
                  write_vector=take(W),
                  free_gates=[torch.sigmoid(v[:, 0]) for v in [take(1) for _ in range(R)]],
                  allocation_gate=torch.sigmoid(take(1)[:, 0]),
                  write_gate=torch.sigmoid(take(1)[:, 0]))
    read_modes = []
    for _ in range(R):
        raw = take(3)
        e = [torch.exp(raw[:, m]) for m in range(3)]
        read_modes.append([e[m] / (e[0] + e[1] + e[2]) for m in range(3)])  # backward, content, forward
    fields["read_modes"] = read_modes
    return fields


def _usage(usage_prev: torch.Tensor, w_write_prev: torch.Tensor, w_read_prev: torch.Tensor,
           free_gates: list[torch.Tensor]) -> list[torch.Tensor]:
    """Retention psi[i] = prod_h (1 - f_h w^r_h[i]) and usage u[i] = (u_prev + w_prev - u_prev w_prev) psi[i],
    as N entries (B,)."""
    B, N = usage_prev.shape
    usage = []
    for i in range(N):
        psi = torch.ones(B, dtype=usage_prev.dtype, device=usage_prev.device)
        for head in range(len(free_gates)):
            psi = psi * (1.0 - free_gates[head] * w_read_prev[:, head, i])
        u, ww = usage_prev[:, i], w_write_prev[:, i]
        usage.append((u + ww - u * ww) * psi)
    return usage


def _allocation(usage: list[torch.Tensor], usage_t: torch.Tensor) -> list[torch.Tensor]:
    """a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i], the free list phi sorting slots by ascending
    usage (ties: lower slot first), as N entries (B,). usage: N entries (B,), and stacked (B, N)."""
    N, B = len(usage), usage[0].shape[0]
    phi = torch.sort(usage_t.detach(), dim=-1, stable=True).indices
    alloc = [[None] * N for _ in range(B)]
    for b in range(B):
        running = torch.ones((), dtype=usage[0].dtype, device=usage[0].device)
        for j in range(N):
            slot = int(phi[b, j])
            alloc[b][slot] = (1.0 - usage[slot][b]) * running
            running = running * usage[slot][b]
    return [torch.stack([alloc[b][i] for b in range(B)]) for i in range(N)]


def _links(links_prev: torch.Tensor, precedence_prev: torch.Tensor, w_write: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """L[i][j] = (1 - w[i] - w[j]) L_prev[i, j] + w[i] p_prev[j], L[i][i] = 0, as N x N entries (B,)."""
    N = len(w_write)
    links = [[None] * N for _ in range(N)]
    for i in range(N):
        for j in range(N):
            if i == j:
                links[i][j] = torch.zeros_like(w_write[i])
            else:
                links[i][j] = (1.0 - w_write[i] - w_write[j]) * links_prev[:, i, j] \
                    + w_write[i] * precedence_prev[:, j]
    return links


def _read(memory: list[torch.Tensor], links: list[list[torch.Tensor]], prev: list[torch.Tensor], key: torch.Tensor,
          strength: torch.Tensor, pi: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One read head: forward f[i] = sum_j L[i][j] w_prev[j], backward b[i] = sum_j L[j][i] w_prev[j],
    content c = C(M, k, beta); w = pi_0 b + pi_1 c + pi_2 f (N entries (B,)); read r = sum_i w[i] M[i] (B, W)."""
    N = len(memory)
    forward = [sum(links[i][j] * prev[j] for j in range(N)) for i in range(N)]
    backward = [sum(links[j][i] * prev[j] for j in range(N)) for i in range(N)]
    content = _content(memory, key, strength)
    w = [pi[0] * backward[i] + pi[1] * content[i] + pi[2] * forward[i] for i in range(N)]
    return w, sum(w[i].unsqueeze(-1) * memory[i] for i in range(N))


def literal_dnc_step(mem, h: torch.Tensor, state):
    """Literal DNC step with ``mem``'s (a ``dnc.DNCMemory``) weights.

    h: (B, controller_size); state as ``DNCMemory.initial_state``. Returns
    (reads (B, R*W), (memory, usage, links, precedence, read weights, write weights, reads)).
    """
    memory_t, usage_prev, links_prev, precedence_prev, w_read_prev, w_write_prev, _ = state
    N, R = mem.memory_slots, mem.num_read_heads
    xi = _interface(mem, h)
    memory = [memory_t[:, i] for i in range(N)]
    usage = _usage(usage_prev, w_write_prev, w_read_prev, xi["free_gates"])
    usage_t = torch.stack(usage, dim=-1)
    allocation = _allocation(usage, usage_t)
    # Write weighting w = g^w (g^a a + (1 - g^a) c^w).
    write_content = _content(memory, xi["write_key"], xi["write_strength"])
    g_w, g_a = xi["write_gate"], xi["allocation_gate"]
    w_write = [g_w * (g_a * allocation[i] + (1.0 - g_a) * write_content[i]) for i in range(N)]
    # Erase then write: M[i] = M[i] (1 - w[i] e) + w[i] v.
    erase, write_vector = xi["erase"], xi["write_vector"]
    memory = [memory[i] * (1.0 - w_write[i].unsqueeze(-1) * erase) + w_write[i].unsqueeze(-1) * write_vector
              for i in range(N)]
    # Temporal links with the previous precedence, then the new precedence p = (1 - sum w) p_prev + w.
    links = _links(links_prev, precedence_prev, w_write)
    write_total = sum(w_write)
    precedence = [(1.0 - write_total) * precedence_prev[:, i] + w_write[i] for i in range(N)]
    # Read weightings and reads, from the new memory.
    read_w, reads = [], []
    for head in range(R):
        prev = [w_read_prev[:, head, j] for j in range(N)]
        w, r = _read(memory, links, prev, xi["read_keys"][head], xi["read_strengths"][head], xi["read_modes"][head])
        read_w.append(torch.stack(w, dim=-1))
        reads.append(r)

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
