"""A slow, literal MANN-LRUA forward pass, written equation by equation from Santoro et
al. (2016): per time step, per read head, ``F.cosine_similarity`` against every memory
row, a fresh least-used mask each step, no hoisting and no fusing.

It reads its weights from a ``models.MANN`` (so the two compute with the same
parameters) and serves twice: as the test oracle the fast code must match to 1e-5, and
as the "plain PyTorch loop" the benchmark compares the fast path against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot_mann.memory.base import COSINE_EPS, MEMORY_INIT


def reference_forward(model, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
    """Literal forward of ``model`` (a models.MANN with LRUA memory).

    images: (B,T,C,H,W); label_inputs: (B,T,L). Returns logits (B,T,O).
    """
    mem = model.memory
    B, T = images.shape[:2]
    H, R, N, W = model.hidden, mem.num_read_heads, mem.memory_slots, mem.memory_width
    dtype, device = label_inputs.dtype, label_inputs.device

    h = torch.zeros(B, H, dtype=dtype, device=device)
    c = torch.zeros(B, H, dtype=dtype, device=device)
    memory = torch.full((B, N, W), MEMORY_INIT, dtype=dtype, device=device)
    w_r = [torch.zeros(B, N, dtype=dtype, device=device) for _ in range(R)]
    w_u = torch.zeros(B, N, dtype=dtype, device=device)
    reads = [torch.zeros(B, W, dtype=dtype, device=device) for _ in range(R)]
    logits = []
    for t in range(T):
        # Controller: LSTM over [x_t, y_{t-1}, r_{t-1}].
        x = torch.cat([model.encoder(images[:, t:t + 1])[:, 0], label_inputs[:, t]] , dim=-1)
        gates = F.linear(x, model.input_proj.weight, model.input_proj.bias) \
            + F.linear(torch.cat([h] + reads, dim=-1), model.recurrent.weight)
        i_g, f_g, g_g, o_g = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
        h = torch.sigmoid(o_g) * torch.tanh(c)

        # Least-used weights from the previous usage (eq. 6), ties to the lower index;
        # the single least-used slot is zeroed before writing.
        order = torch.sort(w_u.detach(), dim=-1, stable=True).indices
        w_lu = torch.zeros(B, N, dtype=dtype, device=device).scatter_(1, order[:, :R], 1.0)
        zero = torch.zeros(B, N, dtype=dtype, device=device).scatter_(1, order[:, :1], 1.0)
        memory = memory * (1.0 - zero).unsqueeze(-1)

        keys_all = torch.tanh(model.memory.key(h))
        alpha_all = torch.sigmoid(model.memory.gate(h))
        beta_all = None
        if mem.strength is not None:
            beta_all = 1.0 + F.softplus(mem.strength(h))
        new_w_r, new_reads, w_w_sum = [], [], torch.zeros(B, N, dtype=dtype, device=device)
        writes = []
        for head in range(R):
            k = keys_all[:, head * W:(head + 1) * W]
            a = alpha_all[:, head:head + 1]
            w_w = a * w_r[head] + (1.0 - a) * w_lu  # eq. 7
            writes.append((w_w, k))
            w_w_sum = w_w_sum + w_w
        for w_w, k in writes:  # eq. 8: every head writes its key
            memory = memory + w_w.unsqueeze(-1) * k.unsqueeze(1)
        w_r_sum = torch.zeros(B, N, dtype=dtype, device=device)
        for head in range(R):
            k = keys_all[:, head * W:(head + 1) * W]
            sim = F.cosine_similarity(k.unsqueeze(1).expand(B, N, W), memory, dim=-1, eps=COSINE_EPS)
            if beta_all is not None:
                sim = sim * beta_all[:, head:head + 1]
            w = torch.exp(sim) / torch.exp(sim).sum(dim=-1, keepdim=True)  # eq. 2-3
            new_w_r.append(w)
            new_reads.append((w.unsqueeze(-1) * memory).sum(dim=1))  # eq. 4
            w_r_sum = w_r_sum + w
        w_u = (mem.usage_decay * w_u + w_r_sum + w_w_sum).detach()  # eq. 5
        w_r, reads = new_w_r, new_reads
        logits.append(model.output(torch.cat([h] + reads, dim=-1)))
    return torch.stack(logits, dim=1)
