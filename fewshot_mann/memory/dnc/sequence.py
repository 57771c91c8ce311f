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

tests/test_dnc.py and tests/test_backends.py check outputs and gradients against ``reference.py``
(the literal equations), against the autograd step, and with gradcheck.
"""
from __future__ import annotations

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
    def backward(ctx, g_memory, g_usage, g_links, g_precedence, g_w_read, g_w_write, g_reads):
        (memory, usage_prev, links_prev, precedence_prev, w_read_prev, w_write_prev,
         new_memory, links, w_read, w_write) = ctx.saved_tensors
        (read_strength_raw, read_strength, write_strength_raw, write_strength, erase, gates, modes,
         factors, retention, usage_hat, order, sorted_usage, cum_in, before, alloc,
         write_k_hat, write_key_norm, write_content, write_sim, mix, write_total,
         forward_w, backward_w, read_k_hat, read_key_norm, read_content, read_sim,
         write_vector, inv_prev, mask_prev, inv_new, mask_new) = ctx.caches
        batch, slots, width = memory.shape
        heads = w_read_prev.shape[1]
        zeros = torch.zeros_like
        g_memory = zeros(new_memory) if g_memory is None else g_memory
        g_usage = zeros(usage_prev) if g_usage is None else g_usage
        g_links = zeros(links) if g_links is None else g_links
        g_precedence = zeros(precedence_prev) if g_precedence is None else g_precedence
        g_w_read = zeros(w_read) if g_w_read is None else g_w_read
        g_w_write = zeros(w_write) if g_w_write is None else g_w_write
        g_reads = zeros(w_read[..., :1].expand(-1, -1, width)) if g_reads is None else g_reads.view(batch, heads, width)
        free, alloc_gate, write_gate = gates[:, :heads], gates[:, heads:heads + 1], gates[:, heads + 1:]

        # reads = w_read M_t; w_read = pi_b b + pi_c c + pi_f f.
        g_w_read = torch.baddbmm(g_w_read, g_reads, new_memory.transpose(1, 2))  # (B, R, N)
        g_modes = torch.stack([(g_w_read * backward_w).sum(-1), (g_w_read * read_content).sum(-1),
                               (g_w_read * forward_w).sum(-1)], dim=-1)
        g_modes_raw = softmax_backward(g_modes, modes)
        g_backward_w = g_w_read * modes[..., 0:1]
        g_read_content = g_w_read * modes[..., 1:2]
        g_forward_w = g_w_read * modes[..., 2:3]

        # Read content weighting softmax(beta * D(k, M_t)).
        g_z = softmax_backward(g_read_content, read_content)
        g_read_strength_raw = (g_z * read_sim).sum(-1) * torch.sigmoid(read_strength_raw)  # (B, R)
        g_sim = read_strength * g_z
        q = g_sim * inv_new.unsqueeze(1)
        g_read_keys = key_grad(torch.bmm(q, new_memory), read_k_hat, read_key_norm)
        # The whole gradient of M_t: from the next step, the reads and the read content.
        g_new = torch.baddbmm(g_memory, torch.cat([w_read, q], dim=1).transpose(1, 2),
                              torch.cat([g_reads, read_k_hat], dim=1))
        radial = (g_sim * read_sim).sum(1) * inv_new.square() * mask_new
        g_new.addcmul_(new_memory, radial.unsqueeze(-1), value=-1.0)
        del q, g_sim, g_z

        # Links and the forward/backward weightings: G = gL + gf^T r + r^T gb (zero diagonal).
        left = torch.cat([g_forward_w, w_read_prev], dim=1).transpose(1, 2)
        right = torch.cat([w_read_prev, g_backward_w], dim=1)
        grad = torch.baddbmm(g_links, left, right)
        grad.diagonal(dim1=1, dim2=2).zero_()
        g_w_read_prev = torch.bmm(g_forward_w, links) + torch.bmm(links, g_backward_w.transpose(1, 2)).transpose(1, 2)
        g_precedence_prev = torch.bmm(w_write.unsqueeze(1), grad).squeeze(1)
        g_w_write = g_w_write + (grad * precedence_prev.unsqueeze(1)).sum(-1)  # G p (a batched matvec is slower)
        weighted = grad * links_prev
        g_w_write -= weighted.sum(-1) + weighted.sum(-2)
        del weighted
        g_links_prev = grad * (1.0 - w_write).unsqueeze(-1)  # G (1 - w[i] - w[j])
        g_links_prev.addcmul_(grad, w_write.unsqueeze(1), value=-1.0)
        del grad
        # Precedence p = (1 - sum w) p_prev + w.
        g_precedence_prev.addcmul_(g_precedence, 1.0 - write_total)
        g_w_write += g_precedence - (g_precedence * precedence_prev).sum(-1, keepdim=True)

        # Erase then write: M_t = M + w (v - M e).
        prod = g_new * memory
        g_w_write += torch.bmm(g_new, write_vector.unsqueeze(-1)).squeeze(-1)
        g_w_write -= torch.bmm(prod, erase.unsqueeze(-1)).squeeze(-1)
        g_write_vector = torch.bmm(w_write.unsqueeze(1), g_new).squeeze(1)
        g_erase = torch.bmm(w_write.unsqueeze(1), prod).squeeze(1).neg_()
        del prod
        g_mem = torch.addcmul(g_new, g_new * w_write.unsqueeze(-1), erase.unsqueeze(1), value=-1.0)
        del g_new

        # w_write = g_w * lerp(c^w, a, g_a).
        g_write_gate = (g_w_write * mix).sum(-1, keepdim=True)
        g_mix = g_w_write * write_gate
        g_alloc_gate = (g_mix * (alloc - write_content)).sum(-1, keepdim=True)
        g_alloc = g_mix * alloc_gate
        g_write_content = g_mix - g_alloc

        # Write content weighting softmax(beta * D(k, M_{t-1})).
        g_z = softmax_backward(g_write_content, write_content)  # (B, N)
        g_write_strength_raw = (g_z * write_sim).sum(-1, keepdim=True) * torch.sigmoid(write_strength_raw)
        g_sim = write_strength.squeeze(-1) * g_z
        q = g_sim * inv_prev
        g_write_key = key_grad(torch.bmm(q.unsqueeze(1), memory), write_k_hat, write_key_norm).squeeze(1)
        g_mem.baddbmm_(q.unsqueeze(-1), write_k_hat)
        g_mem.addcmul_(memory, (g_sim * write_sim * inv_prev.square() * mask_prev).unsqueeze(-1), value=-1.0)

        # Allocation a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i].
        g_sorted_alloc = g_alloc.gather(-1, order)
        g_sorted = -g_sorted_alloc * before
        g_cum_in = cumprod_backward(g_sorted_alloc * (1.0 - sorted_usage), cum_in, before)
        g_sorted[:, :-1] += g_cum_in[:, 1:]
        g_usage = g_usage.scatter_add(-1, order, g_sorted)

        # Usage u = u_hat * psi, u_hat = u_prev + w_prev - u_prev w_prev, psi = prod_h (1 - f_h w^r_h).
        g_usage_hat = g_usage * retention
        g_usage_prev = g_usage_hat * (1.0 - w_write_prev)
        g_w_write_prev = g_usage_hat * (1.0 - usage_prev)
        ones = torch.ones_like(factors[:, :1])
        others = torch.cumprod(torch.cat([ones, factors[:, :-1]], dim=1), dim=1)  # prod_{h'<h}
        others *= torch.cumprod(torch.cat([ones, factors.flip(1)[:, :-1]], dim=1), dim=1).flip(1)  # prod_{h'>h}
        g_factors = (g_usage * usage_hat).unsqueeze(1) * others  # (B, R, N)
        g_free = -(g_factors * w_read_prev).sum(-1)
        g_w_read_prev.addcmul_(g_factors, free.unsqueeze(-1), value=-1.0)

        g_gates = torch.cat([g_free, g_alloc_gate, g_write_gate], dim=-1) * gates * (1.0 - gates)
        g_xi = torch.cat([g_read_keys.flatten(1), g_read_strength_raw, g_write_key, g_write_strength_raw,
                          g_erase * erase * (1.0 - erase), g_write_vector, g_gates, g_modes_raw.flatten(1)], dim=-1)
        return g_xi, g_mem, g_usage_prev, g_links_prev, g_precedence_prev, g_w_read_prev, g_w_write_prev


def dnc_step(xi, memory, usage, links, precedence, w_read, w_write):
    """``DNCStep.apply``: the new state (memory, usage, links, precedence, read weights,
    write weights, reads (B, R * W))."""
    return DNCStep.apply(xi, memory, usage, links, precedence, w_read, w_write)


def memory_step(memory: DNCMemory, h: torch.Tensor, state):
    """``memory.step(h, state)`` through ``DNCStep``: (reads (B, R*W), new state)."""
    new_state = dnc_step(memory.interface(h), *state[:-1])
    return new_state[-1], new_state
