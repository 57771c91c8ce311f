"""One DNC memory step as an autograd Function with a hand-written backward.

The same mathematics as ``DNCMemory.step`` (the autograd step of ``equations.py``, which
states the equations), from the raw interface vector to the reads: interface
squashing, retention and usage, allocation (sort indices constant, as there), write
content weighting, write weighting, erase/write, temporal links and precedence, the
forward/backward/content read weightings and the reads. Autograd runs some 110 small
operations per step of that path, each a graph node with its own saved tensors, and
makes several passes over the (B, N, W) memory and the (B, N, N) links for every use of
them. Here forward is plain tensor code and backward is written out:

- softmax, oneplus, sigmoid and the product over read heads (retention) have their
  usual closed-form gradients; the product over heads excluding one head is a prefix
  times a suffix product (no division: a factor may be exactly 0);
- the allocation's exclusive cumulative product has torch's cumprod gradient
  (``cumprod_backward``): a reversed cumulative sum divided by the factor, and, where
  a row has zeros (a fresh memory's usage), the exact value at its first zero and 0
  after it;
- the memory enters the content weightings only through cosine similarities, whose
  gradient with respect to the memory is ``q^T k_hat`` minus a per-row multiple of the
  memory, added in one batched matmul with the read's term (as ``ntm/sequence.py``);
- the links' gradient ``G = gL + gf^T r + r^T gb`` is one batched matmul, and the write's ``M_t = M + w (v - M e)`` gives its gradients
  in a few batched matmuls and elementwise passes.

What backward needs of the (B, N, W) memories and (B, N, N) links is the step's inputs
and outputs, alive anyway as the state of the recurrence; only (B, N)- and (B, R, N)-
sized intermediates are kept besides.

tests/memory/test_dnc.py and tests/memory/test_backends.py check outputs and gradients against ``reference.py``
(the literal equations), against the autograd step, and with gradcheck.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from fewshot_mann.memory.addressing import inv_norms, key_grad, softmax_backward, unit  # shared with the NTM step
from fewshot_mann.memory.dnc.equations import READ_MODES, DNCMemory


def _interface_sizes(width: int, heads: int) -> list[int]:
    """Field lengths of the interface vector, in equations.py's layout; the last four fields
    before the read modes (free gates, allocation gate, write gate) are adjacent."""
    return [heads * width, heads, width, 1, width, width, heads + 2, READ_MODES * heads]


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1).cumsum(-1).flip(-1)


def cumprod_backward(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gradient of ``out = cumprod(x, -1)`` (B, N): ``dx_j = sum_{k>=j} grad_k prod_{i<=k, i!=j} x_i``.

    Without zeros that is ``reverse_cumsum(grad * out)_j / x_j``. In a row with zeros, first
    at z: the same for j < z (the terms k >= z are 0 on both sides), ``prod_{i<z} x_i *
    sum_{k>=z} grad_k prod_{z<i<=k} x_i`` at z, and 0 after z (every product holds x_z).
    """
    zero = x == 0
    if not bool(zero.any()):
        return _reverse_cumsum(grad * out).div_(x)
    idx = torch.arange(x.shape[-1], device=x.device)
    first = zero.int().argmax(-1, keepdim=True)  # 0 in rows without a zero (masked below)
    has_zero = zero.any(-1, keepdim=True)
    g = _reverse_cumsum(grad * out).div_(torch.where(zero, torch.ones_like(x), x))
    after = torch.cumprod(torch.where(idx <= first, torch.ones_like(x), x), -1)  # k >= z: prod_{z<i<=k} x_i
    before = torch.where(idx < first, x, torch.ones_like(x)).prod(-1, keepdim=True)  # prod_{i<z} x_i
    at_first = before * (grad * after * (idx >= first)).sum(-1, keepdim=True)
    g = torch.where(has_zero & (idx == first), at_first, g)
    return g.masked_fill_(has_zero & (idx > first), 0.0)


def _content(k_hat: torch.Tensor, strength: torch.Tensor, memory: torch.Tensor, inv_norm: torch.Tensor):
    """C(M, k, beta) for unit keys k_hat (B, H, W), strengths (B, H, 1) ->
    (weights (B, H, N), cosine similarities (B, H, N))."""
    sim = torch.bmm(k_hat, memory.transpose(1, 2)).mul_(inv_norm.unsqueeze(1))
    return torch.softmax(strength * sim, dim=-1), sim


class _Saved(NamedTuple):
    """What ``DNCStep.backward`` reads of the forward: its inputs and outputs
    (``ctx.saved_tensors``), then the intermediates (``ctx.caches``), in that order."""
    memory: torch.Tensor
    usage_prev: torch.Tensor
    links_prev: torch.Tensor
    precedence_prev: torch.Tensor
    w_read_prev: torch.Tensor
    w_write_prev: torch.Tensor
    new_memory: torch.Tensor
    links: torch.Tensor
    w_read: torch.Tensor
    w_write: torch.Tensor
    read_strength_raw: torch.Tensor
    read_strength: torch.Tensor
    write_strength_raw: torch.Tensor
    write_strength: torch.Tensor
    erase: torch.Tensor
    gates: torch.Tensor
    modes: torch.Tensor
    factors: torch.Tensor
    retention: torch.Tensor
    usage_hat: torch.Tensor
    order: torch.Tensor
    sorted_usage: torch.Tensor
    cum_in: torch.Tensor
    before: torch.Tensor
    alloc: torch.Tensor
    write_k_hat: torch.Tensor
    write_key_norm: torch.Tensor
    write_content: torch.Tensor
    write_sim: torch.Tensor
    mix: torch.Tensor
    write_total: torch.Tensor
    forward_w: torch.Tensor
    backward_w: torch.Tensor
    read_k_hat: torch.Tensor
    read_key_norm: torch.Tensor
    read_content: torch.Tensor
    read_sim: torch.Tensor
    write_vector: torch.Tensor
    inv_prev: torch.Tensor
    mask_prev: torch.Tensor
    inv_new: torch.Tensor
    mask_new: torch.Tensor

    def gate_parts(self):
        """(free gates (B, R), allocation gate (B, 1), write gate (B, 1))."""
        heads = self.w_read_prev.shape[1]
        return self.gates[:, :heads], self.gates[:, heads:heads + 1], self.gates[:, heads + 1:]


# The backward, phase by phase in reverse order of the forward. Each takes the gradients of a
# phase's outputs and returns those of its inputs.

def _read_weighting_backward(c: _Saved, g_w_read, g_reads):
    """reads = w_read M_t; w_read = pi_b b + pi_c c + pi_f f. Returns
    (d mode logits, d b, d c, d f)."""
    g_w_read = torch.baddbmm(g_w_read, g_reads, c.new_memory.transpose(1, 2))  # (B, R, N)
    g_modes = torch.stack([(g_w_read * c.backward_w).sum(-1), (g_w_read * c.read_content).sum(-1),
                           (g_w_read * c.forward_w).sum(-1)], dim=-1)
    g_modes_raw = softmax_backward(g_modes, c.modes)
    modes = c.modes
    return g_modes_raw, g_w_read * modes[..., 0:1], g_w_read * modes[..., 1:2], g_w_read * modes[..., 2:3]


def _read_content_backward(c: _Saved, g_read_content, g_memory, g_reads):
    """Read content weighting softmax(beta * D(k, M_t)). Returns (d read strength logits,
    d read keys, d M_t: from the next step, the reads and the read content)."""
    g_z = softmax_backward(g_read_content, c.read_content)
    g_read_strength_raw = (g_z * c.read_sim).sum(-1) * torch.sigmoid(c.read_strength_raw)  # (B, R)
    g_sim = c.read_strength * g_z
    q = g_sim * c.inv_new.unsqueeze(1)
    g_read_keys = key_grad(torch.bmm(q, c.new_memory), c.read_k_hat, c.read_key_norm)
    g_new = torch.baddbmm(g_memory, torch.cat([c.w_read, q], dim=1).transpose(1, 2),
                          torch.cat([g_reads, c.read_k_hat], dim=1))
    radial = (g_sim * c.read_sim).sum(1) * c.inv_new.square() * c.mask_new
    g_new.addcmul_(c.new_memory, radial.unsqueeze(-1), value=-1.0)
    return g_read_strength_raw, g_read_keys, g_new


def _links_backward(c: _Saved, g_links, g_precedence, g_forward_w, g_backward_w, g_w_write):
    """Links L = (1 - w[i] - w[j]) L_prev + w p_prev^T (zero diagonal), f = L w^r_prev,
    b = L^T w^r_prev, and precedence p = (1 - sum w) p_prev + w. Returns (d w^r_prev, d p_prev,
    d w_write, d L_prev)."""
    w_write, precedence_prev = c.w_write, c.precedence_prev
    # G = gL + gf^T r + r^T gb, zero diagonal.
    left = torch.cat([g_forward_w, c.w_read_prev], dim=1).transpose(1, 2)
    right = torch.cat([c.w_read_prev, g_backward_w], dim=1)
    grad = torch.baddbmm(g_links, left, right)
    grad.diagonal(dim1=1, dim2=2).zero_()
    g_w_read_prev = torch.bmm(g_forward_w, c.links) + torch.bmm(c.links, g_backward_w.transpose(1, 2)).transpose(1, 2)
    g_precedence_prev = torch.bmm(w_write.unsqueeze(1), grad).squeeze(1)
    g_w_write = g_w_write + (grad * precedence_prev.unsqueeze(1)).sum(-1)  # G p (a batched matvec is slower)
    weighted = grad * c.links_prev
    g_w_write -= weighted.sum(-1) + weighted.sum(-2)
    del weighted
    g_links_prev = grad * (1.0 - w_write).unsqueeze(-1)  # G (1 - w[i] - w[j])
    g_links_prev.addcmul_(grad, w_write.unsqueeze(1), value=-1.0)
    del grad
    # Precedence p = (1 - sum w) p_prev + w.
    g_precedence_prev.addcmul_(g_precedence, 1.0 - c.write_total)
    g_w_write += g_precedence - (g_precedence * precedence_prev).sum(-1, keepdim=True)
    return g_w_read_prev, g_precedence_prev, g_w_write, g_links_prev


def _erase_write_backward(c: _Saved, g_new, g_w_write):
    """Erase then write: M_t = M + w (v - M e). Adds into d w_write (in place); returns
    (d write vector, d erase, d M from this path)."""
    w_write, erase = c.w_write, c.erase
    prod = g_new * c.memory
    g_w_write += torch.bmm(g_new, c.write_vector.unsqueeze(-1)).squeeze(-1)
    g_w_write -= torch.bmm(prod, erase.unsqueeze(-1)).squeeze(-1)
    g_write_vector = torch.bmm(w_write.unsqueeze(1), g_new).squeeze(1)
    g_erase = torch.bmm(w_write.unsqueeze(1), prod).squeeze(1).neg_()
    del prod
    g_mem = torch.addcmul(g_new, g_new * w_write.unsqueeze(-1), erase.unsqueeze(1), value=-1.0)
    return g_write_vector, g_erase, g_mem


def _write_weighting_backward(c: _Saved, g_w_write):
    """w_write = g_w * lerp(c^w, a, g_a). Returns (d write gate, d allocation gate, d a, d c^w)."""
    _, alloc_gate, write_gate = c.gate_parts()
    g_write_gate = (g_w_write * c.mix).sum(-1, keepdim=True)
    g_mix = g_w_write * write_gate
    g_alloc_gate = (g_mix * (c.alloc - c.write_content)).sum(-1, keepdim=True)
    g_alloc = g_mix * alloc_gate
    return g_write_gate, g_alloc_gate, g_alloc, g_mix - g_alloc


def _write_content_backward(c: _Saved, g_write_content, g_mem):
    """Write content weighting softmax(beta * D(k, M_{t-1})). Adds into d M (in place);
    returns (d write strength logit, d write key)."""
    g_z = softmax_backward(g_write_content, c.write_content)  # (B, N)
    g_write_strength_raw = (g_z * c.write_sim).sum(-1, keepdim=True) * torch.sigmoid(c.write_strength_raw)
    g_sim = c.write_strength.squeeze(-1) * g_z
    q = g_sim * c.inv_prev
    g_write_key = key_grad(torch.bmm(q.unsqueeze(1), c.memory), c.write_k_hat, c.write_key_norm).squeeze(1)
    g_mem.baddbmm_(q.unsqueeze(-1), c.write_k_hat)
    g_mem.addcmul_(c.memory, (g_sim * c.write_sim * c.inv_prev.square() * c.mask_prev).unsqueeze(-1), value=-1.0)
    return g_write_strength_raw, g_write_key


def _allocation_backward(c: _Saved, g_alloc, g_usage):
    """Allocation a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]. Returns d u (all paths)."""
    g_sorted_alloc = g_alloc.gather(-1, c.order)
    g_sorted = -g_sorted_alloc * c.before
    g_cum_in = cumprod_backward(g_sorted_alloc * (1.0 - c.sorted_usage), c.cum_in, c.before)
    g_sorted[:, :-1] += g_cum_in[:, 1:]
    return g_usage.scatter_add(-1, c.order, g_sorted)


def _usage_backward(c: _Saved, g_usage, g_w_read_prev):
    """Usage u = u_hat * psi, u_hat = u_prev + w_prev - u_prev w_prev, psi = prod_h (1 - f_h w^r_h).
    Adds into d w^r_prev (in place); returns (d u_prev, d w_write_prev, d free gates)."""
    factors, free = c.factors, c.gate_parts()[0]
    g_usage_hat = g_usage * c.retention
    g_usage_prev = g_usage_hat * (1.0 - c.w_write_prev)
    g_w_write_prev = g_usage_hat * (1.0 - c.usage_prev)
    ones = torch.ones_like(factors[:, :1])
    others = torch.cumprod(torch.cat([ones, factors[:, :-1]], dim=1), dim=1)  # prod_{h'<h}
    others *= torch.cumprod(torch.cat([ones, factors.flip(1)[:, :-1]], dim=1), dim=1).flip(1)  # prod_{h'>h}
    g_factors = (g_usage * c.usage_hat).unsqueeze(1) * others  # (B, R, N)
    g_free = -(g_factors * c.w_read_prev).sum(-1)
    g_w_read_prev.addcmul_(g_factors, free.unsqueeze(-1), value=-1.0)
    return g_usage_prev, g_w_write_prev, g_free


def _interface_backward(c: _Saved, g_read_keys, g_read_strength_raw, g_write_key, g_write_strength_raw, g_erase,
                        g_write_vector, g_free, g_alloc_gate, g_write_gate, g_modes_raw):
    """The squashing of the interface vector (sigmoids; the oneplus and softmax slopes were
    taken above), back to the raw vector in its layout (``_interface_sizes``)."""
    gates, erase = c.gates, c.erase
    g_gates = torch.cat([g_free, g_alloc_gate, g_write_gate], dim=-1) * gates * (1.0 - gates)
    return torch.cat([g_read_keys.flatten(1), g_read_strength_raw, g_write_key, g_write_strength_raw,
                      g_erase * erase * (1.0 - erase), g_write_vector, g_gates, g_modes_raw.flatten(1)], dim=-1)


def _zeros_for_missing(c: _Saved, g_memory, g_usage, g_links, g_precedence, g_w_read, g_w_write, g_reads):
    """The incoming gradients, zeros for outputs that got none; d reads as (B, R, W)."""
    batch, _, width = c.memory.shape
    heads = c.w_read_prev.shape[1]
    zeros = torch.zeros_like
    return (zeros(c.new_memory) if g_memory is None else g_memory,
            zeros(c.usage_prev) if g_usage is None else g_usage,
            zeros(c.links) if g_links is None else g_links,
            zeros(c.precedence_prev) if g_precedence is None else g_precedence,
            zeros(c.w_read) if g_w_read is None else g_w_read,
            zeros(c.w_write) if g_w_write is None else g_w_write,
            zeros(c.w_read[..., :1].expand(-1, -1, width)) if g_reads is None else g_reads.view(batch, heads, width))


class DNCStep(torch.autograd.Function):
    """(interface (B, I) before squashing, memory (B, N, W), usage (B, N), links (B, N, N),
    precedence (B, N), read weights (B, R, N), write weights (B, N)) -> the new state
    (memory, usage, links, precedence, read weights, write weights, reads (B, R * W))."""

    @staticmethod
    def forward(ctx, xi, memory, usage_prev, links_prev, precedence_prev, w_read_prev, w_write_prev):
        batch, slots, width = memory.shape
        heads = w_read_prev.shape[1]
        (read_keys, read_strength_raw, write_key, write_strength_raw, erase_raw, write_vector, gates_raw,
         modes_raw) = xi.split(_interface_sizes(width, heads), dim=-1)
        read_strength = F.softplus(read_strength_raw).add_(1.0).unsqueeze(-1)  # (B, R, 1)
        write_strength = F.softplus(write_strength_raw).add_(1.0).unsqueeze(-1)  # (B, 1, 1)
        erase = torch.sigmoid(erase_raw)  # (B, W)
        gates = torch.sigmoid(gates_raw)  # (B, R + 2): free gates, allocation gate, write gate
        free, alloc_gate, write_gate = gates[:, :heads], gates[:, heads:heads + 1], gates[:, heads + 1:]
        modes = torch.softmax(modes_raw.view(batch, heads, READ_MODES), dim=-1)  # (B, R, 3)

        # Retention psi = prod_h (1 - f_h w^r_h) and usage.
        factors = torch.addcmul(torch.ones_like(w_read_prev), free.unsqueeze(-1), w_read_prev, value=-1.0)
        retention = factors.prod(dim=1)  # (B, N)
        usage_hat = torch.addcmul(usage_prev, w_write_prev, 1.0 - usage_prev)
        usage = usage_hat * retention

        # Allocation: slots by ascending usage (stable; the order is a constant).
        order = torch.sort(usage, dim=-1, stable=True).indices
        sorted_usage = usage.gather(-1, order)
        cum_in = torch.cat([torch.ones_like(sorted_usage[:, :1]), sorted_usage[:, :-1]], dim=-1)
        before = torch.cumprod(cum_in, dim=-1)  # prod_{i<j} u[phi_i]
        alloc = torch.zeros_like(usage).scatter_(-1, order, (1.0 - sorted_usage) * before)

        # Write weighting from allocation and content.
        inv_prev, mask_prev = inv_norms(memory)
        write_k_hat, write_key_norm = unit(write_key.unsqueeze(1))
        write_content, write_sim = _content(write_k_hat, write_strength, memory, inv_prev)
        write_content, write_sim = write_content.squeeze(1), write_sim.squeeze(1)  # (B, N)
        mix = torch.lerp(write_content, alloc, alloc_gate)
        w_write = write_gate * mix

        # Erase then write: M + w (v - M e).
        change = torch.addcmul(write_vector.unsqueeze(1), memory, erase.unsqueeze(1), value=-1.0)
        new_memory = torch.addcmul(memory, w_write.unsqueeze(-1), change)
        del change

        # Links L[i,j] = (1 - w[i] - w[j]) L_prev[i,j] + w[i] p_prev[j], zero diagonal; precedence.
        # (Two passes with one broadcast factor each: an addcmul with a (B, N, N) outer sum is
        # several times slower on CPU.)
        links = links_prev * (1.0 - w_write).unsqueeze(-1)
        links.addcmul_(links_prev, w_write.unsqueeze(1), value=-1.0)
        links.baddbmm_(w_write.unsqueeze(-1), precedence_prev.unsqueeze(1))
        links.diagonal(dim1=1, dim2=2).zero_()
        write_total = w_write.sum(-1, keepdim=True)
        precedence = torch.addcmul(w_write, 1.0 - write_total, precedence_prev)

        # Read weightings: backward, content, forward; reads from the new memory.
        forward_w = torch.bmm(links, w_read_prev.transpose(1, 2)).transpose(1, 2)  # f = L w^r_prev (no copy of L^T)
        backward_w = torch.bmm(w_read_prev, links)  # b = L^T w^r_prev
        inv_new, mask_new = inv_norms(new_memory)
        read_k_hat, read_key_norm = unit(read_keys.view(batch, heads, width))
        read_content, read_sim = _content(read_k_hat, read_strength, new_memory, inv_new)
        w_read = backward_w * modes[..., 0:1]
        w_read.addcmul_(read_content, modes[..., 1:2]).addcmul_(forward_w, modes[..., 2:3])
        reads = torch.bmm(w_read, new_memory)

        # Kept for backward in the order of the fields of ``_Saved``.
        ctx.caches = (read_strength_raw, read_strength, write_strength_raw, write_strength, erase, gates, modes,
                      factors, retention, usage_hat, order, sorted_usage, cum_in, before, alloc,
                      write_k_hat, write_key_norm, write_content, write_sim, mix, write_total,
                      forward_w, backward_w, read_k_hat, read_key_norm, read_content, read_sim,
                      write_vector, inv_prev, mask_prev, inv_new, mask_new)
        ctx.save_for_backward(memory, usage_prev, links_prev, precedence_prev, w_read_prev, w_write_prev,
                              new_memory, links, w_read, w_write)
        return new_memory, usage, links, precedence, w_read, w_write, reads.view(batch, heads * width)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        """The forward's phases in reverse: read weighting, read content, links and precedence,
        erase/write, write weighting, write content, allocation, usage, interface."""
        c = _Saved(*ctx.saved_tensors, *ctx.caches)
        g_memory, g_usage, g_links, g_precedence, g_w_read, g_w_write, g_reads = _zeros_for_missing(c, *grads)
        g_modes_raw, g_backward_w, g_read_content, g_forward_w = _read_weighting_backward(c, g_w_read, g_reads)
        g_read_strength_raw, g_read_keys, g_new = _read_content_backward(c, g_read_content, g_memory, g_reads)
        g_w_read_prev, g_precedence_prev, g_w_write, g_links_prev = _links_backward(
            c, g_links, g_precedence, g_forward_w, g_backward_w, g_w_write)
        g_write_vector, g_erase, g_mem = _erase_write_backward(c, g_new, g_w_write)
        del g_new
        g_write_gate, g_alloc_gate, g_alloc, g_write_content = _write_weighting_backward(c, g_w_write)
        g_write_strength_raw, g_write_key = _write_content_backward(c, g_write_content, g_mem)
        g_usage = _allocation_backward(c, g_alloc, g_usage)
        g_usage_prev, g_w_write_prev, g_free = _usage_backward(c, g_usage, g_w_read_prev)
        g_xi = _interface_backward(c, g_read_keys, g_read_strength_raw, g_write_key, g_write_strength_raw, g_erase,
                                   g_write_vector, g_free, g_alloc_gate, g_write_gate, g_modes_raw)
        return g_xi, g_mem, g_usage_prev, g_links_prev, g_precedence_prev, g_w_read_prev, g_w_write_prev


def dnc_step(xi, memory, usage, links, precedence, w_read, w_write):
    """``DNCStep.apply``: the new state (memory, usage, links, precedence, read weights,
    write weights, reads (B, R * W))."""
    return DNCStep.apply(xi, memory, usage, links, precedence, w_read, w_write)


def memory_step(memory: DNCMemory, h: torch.Tensor, state):
    """``memory.step(h, state)`` through ``DNCStep``: (reads (B, R*W), new state)."""
    new_state = dnc_step(memory.interface(h), *state[:-1])
    return new_state[-1], new_state
