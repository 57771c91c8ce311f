"""One NTM memory step (one write head) as an autograd Function with a hand-written backward.

The same mathematics as ``NTMMemory.step`` (the autograd step of ``equations.py``, which
states the equations), for the usual case of a single write head. Autograd
runs some 120 small operations per step of that path, each a node of the graph with its
own saved tensors, and makes several passes over the (B, N, W) memory for every use of
it. Here forward is plain tensor code and backward is written out:

- the addressing of a set of heads (eqs. 5-9: content, interpolation, shift, sharpening)
  is ``_address`` forward and ``_address_backward``; the memory enters it only through
  the cosine similarity, whose gradient with respect to the memory is collected as two
  factors (``q^T k_hat`` minus a per-row multiple of the memory) and added in one
  batched matmul with the other terms of the same memory;
- the write ``M_t = M + w (a - M e)`` (erase then add, eqs. 3-4) and the read
  ``r = w_r M_t`` (eq. 2) have their gradients as a few batched matmuls and elementwise
  passes;
- what backward needs of the (B, N, W) memories is the step's input and output, alive
  anyway as the state of the recurrence; only small per-head tensors are saved.

tests/memory/test_ntm.py and tests/memory/test_backends.py check outputs and gradients against ``reference.py``
(the literal equations), against the autograd step, and with gradcheck. ``memory.backend``
runs it (``sequence``, and ``auto``) for one write head; more write heads run the autograd step.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from fewshot_mann.memory.addressing import inv_norms, key_grad, softmax_backward, unit
from fewshot_mann.memory.ntm.equations import LOG_FLOOR, NTMMemory, shift_windows


def _address(params: torch.Tensor, memory: torch.Tensor, inv_norm: torch.Tensor, w_prev: torch.Tensor,
             floor: float):
    """Eqs. 5-9 for heads (B, H, *). Returns (weights (B, H, N), what backward needs)."""
    width = memory.shape[-1]
    key = params[..., :width]
    beta_raw, gate_raw, gamma_raw = params[..., width:width + 1], params[..., width + 1:width + 2], params[..., -1:]
    beta, gamma = F.softplus(beta_raw), 1.0 + F.softplus(gamma_raw)
    gate = torch.sigmoid(gate_raw)
    shift = torch.softmax(params[..., width + 2:-1], dim=-1)  # (B, H, 2S+1), shifts -S..S
    s_range = (shift.shape[-1] - 1) // 2
    k_hat, key_norm = unit(key)
    sim = torch.bmm(k_hat, memory.transpose(1, 2)).mul_(inv_norm.unsqueeze(1))  # (B, H, N)
    content = torch.softmax(beta * sim, dim=-1)
    gated = torch.lerp(w_prev, content, gate)
    if s_range:
        windows = shift_windows(gated, s_range)
        shifted = (windows * shift.flip(-1).unsqueeze(-2)).sum(dim=-1)
    else:
        windows, shifted = None, gated * shift
    log_shifted = shifted.clamp_min(floor).log()
    weights = torch.softmax(gamma * log_shifted, dim=-1)
    cache = (params, key_norm, k_hat, sim, beta, gate, shift, gamma, content, gated, windows, shifted, log_shifted,
             weights)
    return weights, cache


def _address_backward(g_weights: torch.Tensor, w_prev: torch.Tensor, cache, floor: float):
    """Gradients of ``_address``: (params (B, H, P), w_prev (B, H, N), q = dL/dsim * inv_norm
    (B, H, N), k_hat (B, H, W), dL/dsim * sim summed over heads (B, N)); the memory's
    gradient is ``q^T k_hat - inv_norm^2 * that sum * M`` (the caller adds it)."""
    (params, key_norm, k_hat, sim, beta, gate, shift, gamma, content, gated, windows, shifted, log_shifted,
     weights) = cache
    width = k_hat.shape[-1]
    s_range = (shift.shape[-1] - 1) // 2
    # sharpening: weights = softmax(gamma * log(max(shifted, floor)))
    g_u = softmax_backward(g_weights, weights)
    g_gamma = (g_u * log_shifted).sum(-1, keepdim=True)
    g_shifted = (gamma * g_u / shifted.clamp_min(floor)) * (shifted >= floor)
    # circular shift
    if s_range:
        g_gated = (shift_windows(g_shifted, s_range) * shift.unsqueeze(-2)).sum(dim=-1)
        g_shift = (windows * g_shifted.unsqueeze(-1)).sum(dim=-2).flip(-1)
    else:
        g_gated = g_shifted * shift
        g_shift = (g_shifted * gated).sum(-1, keepdim=True)
    g_shift_raw = softmax_backward(g_shift, shift)
    # interpolation: gated = w_prev + g (content - w_prev)
    g_content = gate * g_gated
    g_w_prev = g_gated - g_content
    g_gate = (g_gated * (content - w_prev)).sum(-1, keepdim=True)
    # content weighting: softmax(beta * sim)
    g_z = softmax_backward(g_content, content)
    g_beta = (g_z * sim).sum(-1, keepdim=True)
    g_sim = beta * g_z
    g_params = torch.empty_like(params)
    g_params[..., width:width + 1] = g_beta * torch.sigmoid(params[..., width:width + 1])
    g_params[..., width + 1:width + 2] = g_gate * gate * (1.0 - gate)
    g_params[..., width + 2:-1] = g_shift_raw
    g_params[..., -1:] = g_gamma * torch.sigmoid(params[..., -1:])
    return g_params, g_w_prev, g_sim, (g_sim * sim).sum(1)


class NTMStep(torch.autograd.Function):
    """(write params (B, 1, P + 2W), read params (B, R, P), memory (B, N, W), previous read
    weights (B, R, N), previous write weights (B, 1, N)) -> (memory, read weights, write
    weights, reads (B, R, W)); ``floor`` is ``equations.LOG_FLOOR``."""

    @staticmethod
    def forward(ctx, write_params, read_params, memory, w_read_prev, w_write_prev, floor):
        width = memory.shape[-1]
        inv_prev, mask_prev = inv_norms(memory)
        w_write, write_cache = _address(write_params[..., :-2 * width], memory, inv_prev, w_write_prev, floor)
        erase = torch.sigmoid(write_params[..., -2 * width:-width])  # (B, 1, W)
        add = torch.tanh(write_params[..., -width:])
        change = torch.addcmul(add, memory, erase, value=-1.0)  # a - M e
        new_memory = torch.addcmul(memory, w_write.transpose(1, 2), change)
        inv_new, mask_new = inv_norms(new_memory)
        w_read, read_cache = _address(read_params, new_memory, inv_new, w_read_prev, floor)
        reads = torch.bmm(w_read, new_memory)
        ctx.floor = floor
        # The caches end with the weights, which are outputs: kept on ctx they would make a
        # reference cycle (output -> grad_fn -> ctx -> output) that is never freed, leaking
        # every step's tensors; the outputs go through save_for_backward instead.
        ctx.caches = (write_cache[:-1], read_cache[:-1])
        ctx.save_for_backward(memory, new_memory, w_read_prev, w_write_prev, w_read, w_write, erase, add,
                              inv_prev, mask_prev, inv_new, mask_new)
        return new_memory, w_read, w_write, reads

    @staticmethod
    @once_differentiable
    def backward(ctx, g_memory, g_w_read, g_w_write, g_reads):
        (memory, new_memory, w_read_prev, w_write_prev, w_read, w_write, erase, add,
         inv_prev, mask_prev, inv_new, mask_new) = ctx.saved_tensors
        write_cache, read_cache = (*ctx.caches[0], w_write), (*ctx.caches[1], w_read)
        floor = ctx.floor
        zeros = torch.zeros_like
        g_memory = zeros(new_memory) if g_memory is None else g_memory
        g_w_read = zeros(w_read) if g_w_read is None else g_w_read
        g_w_write = zeros(w_write) if g_w_write is None else g_w_write
        g_reads = zeros(w_read[..., :1].expand(-1, -1, memory.shape[-1])) if g_reads is None else g_reads
        # read: reads = w_read M_t, then the read heads' addressing of M_t
        g_w_read = torch.baddbmm(g_w_read, g_reads, new_memory.transpose(1, 2))
        g_read_params, g_w_read_prev, g_sim, radial = _address_backward(g_w_read, w_read_prev, read_cache, floor)
        q = g_sim * inv_new.unsqueeze(1)
        k_hat_r = read_cache[2]
        g_read_params[..., :k_hat_r.shape[-1]] = key_grad(torch.bmm(q, new_memory), k_hat_r, read_cache[1])
        # the whole gradient of M_t: from the next step, the read and the read addressing
        g_new = torch.baddbmm(g_memory, torch.cat([w_read, q], dim=1).transpose(1, 2),
                              torch.cat([g_reads, k_hat_r], dim=1))
        g_new.addcmul_(new_memory, (radial * inv_new.square() * mask_new).unsqueeze(-1), value=-1.0)
        # write: M_t = M + w (a - M e)
        prod = g_new * memory
        # dw[i] = sum_j G[i,j] (a[j] - M[i,j] e[j])
        g_w_write = g_w_write + torch.bmm(add, g_new.transpose(1, 2)) - torch.bmm(erase, prod.transpose(1, 2))
        g_add = torch.bmm(w_write, g_new)  # (B, 1, W)
        g_erase = -torch.bmm(w_write, prod)
        del prod
        g_mem = torch.addcmul(g_new, g_new * w_write.transpose(1, 2), erase, value=-1.0)
        del g_new
        g_write_addr, g_w_write_prev, g_sim, radial = _address_backward(g_w_write, w_write_prev, write_cache, floor)
        q = g_sim * inv_prev.unsqueeze(1)
        k_hat_w = write_cache[2]
        g_write_addr[..., :k_hat_w.shape[-1]] = key_grad(torch.bmm(q, memory), k_hat_w, write_cache[1])
        g_mem.baddbmm_(q.transpose(1, 2), k_hat_w)
        g_mem.addcmul_(memory, (radial * inv_prev.square() * mask_prev).unsqueeze(-1), value=-1.0)
        g_write_params = torch.cat([g_write_addr, g_erase * erase * (1.0 - erase), g_add * (1.0 - add.square())],
                                   dim=-1)
        return g_write_params, g_read_params, g_mem, g_w_read_prev, g_w_write_prev, None


def ntm_step(write_params, read_params, memory, w_read_prev, w_write_prev, floor: float):
    """``NTMStep.apply``; reads come back as (B, R * W)."""
    new_memory, w_read, w_write, reads = NTMStep.apply(write_params, read_params, memory, w_read_prev,
                                                       w_write_prev, floor)
    return new_memory, w_read, w_write, reads.flatten(1)


def memory_step(memory: NTMMemory, h: torch.Tensor, state):
    """``memory.step(h, state)`` (one write head) through ``NTMStep``: (reads (B, R*W), new state)."""
    memory_prev, w_read_prev, w_write_prev, _ = state
    batch = h.shape[0]
    write = memory.write_params(h).view(batch, memory.num_write_heads, -1)
    read = memory.read_params(h).view(batch, memory.num_read_heads, -1)
    new_memory, w_read, w_write, reads = ntm_step(write, read, memory_prev, w_read_prev, w_write_prev, LOG_FLOOR)
    return reads, (new_memory, w_read, w_write, reads)
