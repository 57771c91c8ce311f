"""The fast path of MANN with LRUA memory: the whole recurrence as one autograd Function.

It computes the same mathematics as ``memory.LRUAMemory.step`` driven by ``models.MANN``
(controller LSTM, LRUA write, cosine read, usage, least-used slots, and the optional key
strength), built for speed at small batches, where per-op dispatch, not arithmetic, is
what costs. tests/test_fast.py checks outputs and gradients of every parameter against
the autograd path (``MANN.fast = False``) and against ``reference.py``.

- forward: one Python loop over time and no autograd graph. Keys, write gate and
  strength come from one matmul; heads are a tensor dimension; keys and memory slots
  are normalised once per step through their norms (``cos = (k_hat . M_n) / |M_n|``,
  ``M / |M|`` is never built); the memory is kept transposed, (B, W, N), because the
  batched matmuls with keys and read weights then run two to three times faster.
- what backward needs is written into buffers made once per sequence, and every
  per-step view of them is made before the loop, so the loop does no slicing. Only the
  memory at the start of every ``SEGMENT`` steps is stored: backward recomputes a
  segment's memories with the same two ops (so bit-identical) just before using them,
  instead of streaming every step's memory through the caches twice.
- backward: hand-written backpropagation through time. Everything that does not depend
  on the incoming gradient (activation slopes, reciprocal norms, masks) is computed for
  all steps at once before the loop; the weight gradients of the recurrent and
  key/gate/strength layers are one matmul each over all (time * batch) rows after it.
- the least-used selection carries no gradient; it is a top-k over a key that breaks ties
  towards the lower slot index, the same choice as ``memory.least_used``'s stable sort.
- without gradients (evaluation) nothing is stored, buffers are reused from step to
  step, and large batches run in chunks of ``INFERENCE_CHUNK`` episodes.

Layout is time-major: ``gates_in (T, B, 4H)`` in, ``(T, B, H + R*W)`` out, row t of the
output being ``[h_t, r_t]``, what ``MANN``'s output layer reads.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fewshot_mann.memory.base import COSINE_EPS, MEMORY_INIT

SEGMENT = 5  # steps per recomputed memory segment in backward
INFERENCE_CHUNK = 128  # on CPU without gradients, larger batches run in chunks (stay in cache)


class LeastUsed:
    """The least-used slots of a usage tensor (B, N), never negative, with buffers reused
    every step: ``select(usage, out)`` writes into ``out`` (B, 2, N) the one-hot of the
    least-used slot (``out[:, 0]``, the row zeroed before the next write) and the n-hot of
    the n least-used slots (``out[:, 1]``, ``w_lu``).

    Ties go to the lower slot index, as ``memory.least_used`` (a stable sort). For float32
    the bit pattern of a non-negative float orders like the float, so ``bits * N + slot``
    is a key without ties, and a top-k over it (much cheaper than a sort) gives the stable
    order. Other dtypes use the stable sort.
    """

    def __init__(self, usage: torch.Tensor, n: int):
        batch, slots = usage.shape
        self.n, self.slots = n, slots
        self.bits = usage.view(torch.int32) if usage.dtype == torch.float32 else None
        device = usage.device
        self.slot_index = torch.arange(slots, device=device)
        self.key = torch.empty(batch, slots, dtype=torch.int64, device=device)
        self.chosen = torch.empty(batch, n, dtype=torch.int64, device=device)
        self.chosen_index = torch.empty(batch, n, dtype=torch.int64, device=device)
        # [least, n-th least] keys, as (B, 2, 1) against key (B, 1, N).
        bounds = self.chosen[:, ::n - 1] if n > 1 else self.chosen.expand(-1, 2)
        self.bounds, self.key_row = bounds.unsqueeze(-1), self.key.unsqueeze(1)

    def select(self, usage: torch.Tensor, out: torch.Tensor) -> None:
        if self.bits is not None:
            torch.add(self.slot_index, self.bits, alpha=self.slots, out=self.key)
            torch.topk(self.key, self.n, dim=-1, largest=False, sorted=True, out=(self.chosen, self.chosen_index))
            torch.le(self.key_row, self.bounds, out=out)
        else:
            order = torch.sort(usage, dim=-1, stable=True).indices[:, :self.n]
            out.zero_()
            out[:, 0].scatter_(1, order[:, :1], 1.0)
            out[:, 1].scatter_(1, order, 1.0)


def _write(memory_prev, zero_onehot, keys_t, ww, out):
    """Eq. 8 on the transposed memory (B, W, N): zero the least-used slot (M - M * onehot,
    exactly M * (1 - onehot)), then add every head's key (keys_t: (B, W, R)) with its
    write weights ww (B, R, N)."""
    memory = torch.addcmul(memory_prev, memory_prev, zero_onehot, value=-1.0, out=out)
    return memory.baddbmm_(keys_t, ww)


def _steps(buffer: torch.Tensor, steps: int, shift: int = 0) -> list:
    """Views ``buffer[t + shift]`` for t < steps of a time-major buffer; for a ring of k
    slots (no gradient kept), ``buffer[(t + shift) % k]``. Made once, so the loops do no
    slicing."""
    views = buffer.unbind(0)
    return [views[(t + shift) % len(views)] for t in range(steps)]


class _Sizes:
    def __init__(self, gates_in, control_rows, slots, heads, strength):
        self.T, self.B, four_h = gates_in.shape
        self.H = four_h // 4
        self.R, self.N = heads, slots
        self.C = control_rows
        self.RW = control_rows - heads * (2 if strength else 1)
        self.W = self.RW // heads
        self.F = self.H + self.RW
        self.strength = strength


def _run_forward(gates_in, w_rec_t, w_ctrl_t, b_ctrl, s: _Sizes, decay: float, store: bool):
    """The forward loop. Returns hr (T+1, B, F) with hr[0] = 0 and hr[t+1] = [h_t, r_t],
    and (when ``store``) the dict of per-step buffers backward reads; each has a leading
    time axis. Without ``store`` buffers hold one or two steps and are reused.

    The memory is kept transposed, (B, W, N) with slot n in column n: then the products
    with keys and read weights are batched matmuls that MKL runs two to three times
    faster at these sizes than with (B, N, W).
    """
    T, B, H, R, N, W, RW = s.T, s.B, s.H, s.R, s.N, s.W, s.RW
    opts = dict(dtype=gates_in.dtype, device=gates_in.device)

    def buf(*shape, extra=0, ring=1):
        return torch.empty(((T + extra) if store else ring), *shape, **opts)

    def steps(buffer, shift=0):
        return _steps(buffer, T, shift)

    hr = torch.empty(T + 1, B, s.F, **opts)
    hr[0] = 0.0
    cells = buf(B, H, extra=1, ring=2)
    cells[0] = 0.0
    acts = buf(B, 4 * H)  # sigma(i), sigma(f), tanh(g), sigma(o)
    tanh_c = buf(B, H)
    ctrl = buf(B, s.C)  # tanh(keys), sigma(gate) [, strength logit]
    mem = torch.empty(2, B, W, N, **opts)  # this step's and the previous step's memory
    # Storing M_t of every step would stream T memories through the caches twice; the
    # memory at the start of every segment of SEGMENT steps is kept instead, and backward
    # recomputes a segment's memories (the same two ops, so bit-identical) before using them.
    checkpoints = torch.empty((T + SEGMENT - 1) // SEGMENT, B, W, N, **opts) if store else None
    key_norm, key_hat = buf(B, R, 1), buf(B, R, W)
    mem_norm, cos = buf(B, N), buf(B, R, N)
    beta = buf(B, R, 1) if s.strength else None
    w_read, w_write = buf(B, R, N, ring=2), buf(B, R, N)
    least = buf(B, 2, N, extra=1, ring=2)  # [one-hot of the row to zero, w_lu]
    usage = torch.zeros(B, N, **opts)
    least_used = LeastUsed(usage, R)
    least_used.select(usage, least[0])
    memory_prev = checkpoints[0] if store else torch.empty(B, W, N, **opts)
    memory_prev.fill_(MEMORY_INIT)
    # Per-step views and scratch buffers, made before the loop.
    gates, hr_in, h_out, r_out = gates_in.unbind(0), hr.unbind(0), hr[1:, :, :H].unbind(0), hr[1:, :, H:].unbind(0)
    pre, z = torch.empty(B, 4 * H, **opts), torch.empty(B, s.C, **opts)
    pre_g, z_keys, z_gate, z_strength = pre[:, 2 * H:3 * H], z[:, :RW], z[:, RW:RW + R], z[:, RW + R:]
    act, act_i, act_f = steps(acts), steps(acts[..., :H]), steps(acts[..., H:2 * H])
    act_g, act_o = steps(acts[..., 2 * H:3 * H]), steps(acts[..., 3 * H:])
    c_prev, c_next, tanh_cell = steps(cells), steps(cells, 1), steps(tanh_c)
    keys_flat, gate, strength_logit = steps(ctrl[..., :RW]), steps(ctrl[..., RW:RW + R]), steps(ctrl[..., RW + R:])
    keys_3d = ctrl[..., :RW].unflatten(-1, (R, W))
    keys_s, keys_t = steps(keys_3d), steps(keys_3d.transpose(-1, -2))
    alpha_s = steps(ctrl[..., RW:RW + R].unsqueeze(-1))
    zero_s, w_lu_s, least_next = steps(least[:, :, :1]), steps(least[:, :, 1:].expand(-1, -1, R, -1)), steps(least, 1)
    w_read_s, w_write_s = steps(w_read), steps(w_write)
    w_read_prev = [torch.zeros(B, R, N, **opts)] + _steps(w_read, T - 1)
    mem_s, mem_t = _steps(mem, T), _steps(mem.transpose(-1, -2), T)
    if store:  # the last memory of a segment goes straight into the next segment's checkpoint
        for t in range(SEGMENT - 1, T - 1, SEGMENT):
            mem_s[t], mem_t[t] = checkpoints[(t + 1) // SEGMENT], checkpoints[(t + 1) // SEGMENT].transpose(-1, -2)
    key_norm_s, key_hat_s, mem_norm_s = steps(key_norm), steps(key_hat), steps(mem_norm)
    mem_norm_row, cos_s = steps(mem_norm.unsqueeze(-2)), steps(cos)
    beta_s = steps(beta) if s.strength else None
    reads = torch.empty(B, R, W, **opts)
    reads_flat = reads.view(B, RW)
    sum_read, sum_write = torch.empty(B, N, **opts), torch.empty(B, N, **opts)
    for t in range(T):
        # Controller: LSTM cell; the [x_t, y_{t-1}] part of the gates was projected outside.
        torch.addmm(gates[t], hr_in[t], w_rec_t, out=pre)
        torch.sigmoid(pre, out=act[t])
        torch.tanh(pre_g, out=act_g[t])
        c = torch.mul(act_f[t], c_prev[t], out=c_next[t])
        c.addcmul_(act_i[t], act_g[t])
        torch.tanh(c, out=tanh_cell[t])
        h = torch.mul(act_o[t], tanh_cell[t], out=h_out[t])
        # Keys, write gate (and strength logit) from one matmul.
        torch.addmm(b_ctrl, h, w_ctrl_t, out=z)
        torch.tanh(z_keys, out=keys_flat[t])
        torch.sigmoid(z_gate, out=gate[t])
        keys = keys_s[t]
        # Write (eqs. 7-8).
        ww = torch.lerp(w_lu_s[t], w_read_prev[t], alpha_s[t], out=w_write_s[t])
        memory = _write(memory_prev, zero_s[t], keys_t[t], ww, out=mem_s[t])
        # Read (eqs. 2-4): cosine similarity through the slot norms, softmax over slots.
        k_norm = torch.linalg.vector_norm(keys, dim=-1, keepdim=True, out=key_norm_s[t]).clamp_min_(COSINE_EPS)
        k_hat = torch.div(keys, k_norm, out=key_hat_s[t])
        torch.linalg.vecdot(memory, memory, dim=1, out=mem_norm_s[t]).sqrt_().clamp_min_(COSINE_EPS)
        sim = torch.bmm(k_hat, memory, out=cos_s[t]).div_(mem_norm_row[t])
        if s.strength:
            strength_logit[t].copy_(z_strength)
            b = beta_s[t]
            b.copy_(torch.nn.functional.softplus(z_strength).add_(1.0).unsqueeze(-1))
            sim = sim * b
        w_r = torch.softmax(sim, dim=-1, out=w_read_s[t])
        torch.bmm(w_r, mem_t[t], out=reads)
        r_out[t].copy_(reads_flat)
        # Usage (eq. 5) and the least-used slots of the next step (eq. 6); no gradient.
        torch.add(torch.sum(w_r, 1, out=sum_read), usage, alpha=decay, out=usage)
        usage.add_(torch.sum(ww, 1, out=sum_write))
        least_used.select(usage, least_next[t])
        memory_prev = memory
    if not store:
        return hr, None
    return hr, dict(cells=cells, acts=acts, tanh_c=tanh_c, ctrl=ctrl, checkpoints=checkpoints, key_norm=key_norm,
                    key_hat=key_hat, mem_norm=mem_norm, cos=cos, beta=beta, w_read=w_read,
                    w_write=w_write, least=least)


def _run_backward(grad_out, hr, saved, w_rec, w_ctrl, s: _Sizes):
    """Backpropagation through time. grad_out: (T, B, F), the gradient of [h_t, r_t].

    Everything that does not depend on the incoming gradient (activation derivatives,
    reciprocal norms, masks) is computed for all steps at once before the loop, so the
    loop runs only what the recurrence forces. Returns (d gates_in, d w_rec, d w_ctrl,
    d b_ctrl).
    """
    T, B, H, R, W, RW = s.T, s.B, s.H, s.R, s.W, s.RW
    acts, cells, tanh_c, ctrl = saved["acts"], saved["cells"], saved["tanh_c"], saved["ctrl"]
    cos, beta, w_read, w_write = saved["cos"], saved["beta"], saved["w_read"], saved["w_write"]
    key_hat, least, checkpoints = saved["key_hat"], saved["least"], saved["checkpoints"]
    opts = dict(dtype=grad_out.dtype, device=grad_out.device)
    sig_i, sig_f, tanh_g, sig_o = acts.unflatten(-1, (4, H)).unbind(2)
    # LSTM: d pre = [d_c tanh(g) sigma'(i), d_c c_prev sigma'(f), d_c sigma(i) tanh'(g), d_h tanh(c) sigma'(o)].
    factors = torch.empty_like(acts)
    fi, ff, fg, fo = factors.unflatten(-1, (4, H)).unbind(2)
    torch.mul(tanh_g, sig_i * (1.0 - sig_i), out=fi)
    torch.mul(cells[:-1], sig_f * (1.0 - sig_f), out=ff)
    torch.mul(sig_i, 1.0 - tanh_g * tanh_g, out=fg)
    torch.mul(tanh_c, sig_o * (1.0 - sig_o), out=fo)
    h_to_c = sig_o * (1.0 - tanh_c * tanh_c)  # d c / d h through h = sigma(o) tanh(c)
    keys_all, alpha_all = ctrl[:, :, :RW], ctrl[:, :, RW:RW + R]
    key_slope = 1.0 - keys_all * keys_all  # tanh'
    gate_slope = alpha_all * (1.0 - alpha_all)  # sigma'
    # Norms: 1/|x|, and the projection term that the clamp (|x| < eps) switches off.
    inv_mem_norm = saved["mem_norm"].reciprocal().unsqueeze(2)  # (T, B, 1, N)
    row_scale = torch.where(saved["mem_norm"] > COSINE_EPS, -inv_mem_norm.squeeze(2), 0.0)
    inv_key_norm = saved["key_norm"].reciprocal()
    key_hat_masked = key_hat * (saved["key_norm"] > COSINE_EPS)
    # d alpha = sum_n d ww (w_r(t-1) - w_lu(t)).
    gate_span = torch.empty_like(w_write)
    gate_span[0] = least[0, :, 1:].neg()
    torch.sub(w_read[:-1], least[1:T, :, 1:], out=gate_span[1:])
    softplus_slope = torch.sigmoid(ctrl[:, :, RW + R:]) if s.strength else None

    d_pre = torch.empty_like(acts)  # (T, B, 4H) = d gates_in
    d_ctrl = torch.empty_like(ctrl)  # (T, B, RW + R [+ R]) d of the key/gate/strength logits
    segment = torch.empty(SEGMENT, *checkpoints.shape[1:], **opts)
    d_mem = torch.zeros_like(checkpoints[0])  # d M_t (transposed, like M) from later steps
    d_read_carry = torch.zeros_like(w_read[0])  # d w_r(t) through the write weights of step t+1
    d_cell = torch.zeros_like(cells[0])
    # Per-step views and scratch buffers, made before the loop.
    g = torch.empty(B, s.F, **opts)  # d [h_t, r_t], all paths
    g.copy_(grad_out[T - 1])
    g_h, g_reads = g[:, :H], g[:, H:].unflatten(-1, (R, W))
    g_reads_t = g_reads.transpose(1, 2)
    d_h = torch.empty(B, H, **opts)
    grads = grad_out.unbind(0)
    keys_3d = keys_all.unflatten(-1, (R, W))
    keys_s, keys_t, alpha_s = keys_3d.unbind(0), keys_3d.transpose(-1, -2).unbind(0), alpha_all.unsqueeze(-1).unbind(0)
    zero_s, segment_s, segment_t = least[:, :, :1].unbind(0), segment.unbind(0), segment.transpose(-1, -2).unbind(0)
    w_read_s, w_write_s = w_read.unbind(0), w_write.unbind(0)
    cos_s, inv_mem_norm_s, row_scale_s = cos.unbind(0), inv_mem_norm.unbind(0), row_scale.unbind(0)
    key_hat_s, key_hat_t = key_hat.unbind(0), key_hat.transpose(-1, -2).unbind(0)
    key_hat_masked_s, inv_key_norm_s = key_hat_masked.unbind(0), inv_key_norm.unbind(0)
    gate_span_s = gate_span.unbind(0)
    d_keys_s, d_gate_s = d_ctrl[..., :RW].unbind(0), d_ctrl[..., RW:RW + R].unbind(0)
    d_strength_s, d_ctrl_s = d_ctrl[..., RW + R:].unbind(0), d_ctrl.unbind(0)
    key_slope_s, gate_slope_s = key_slope.unbind(0), gate_slope.unbind(0)
    h_to_c_s, sig_f_s, fo_s = h_to_c.unbind(0), sig_f.unbind(0), fo.unbind(0)
    factors_ifg = factors.unflatten(-1, (4, H))[:, :, :3].unbind(0)
    d_pre_s, d_pre_o = d_pre.unbind(0), d_pre[..., 3 * H:].unbind(0)
    d_pre_ifg = d_pre.unflatten(-1, (4, H))[:, :, :3].unbind(0)
    d_cell_ifg = d_cell.unsqueeze(1).expand(B, 3, H)
    for t in range(T - 1, -1, -1):
        if t == T - 1 or t % SEGMENT == SEGMENT - 1:  # recompute this segment's memories
            first = t - t % SEGMENT
            memory = checkpoints[first // SEGMENT]
            for u in range(first, t + 1):
                memory = _write(memory, zero_s[u], keys_t[u], w_write_s[u], out=segment_s[u - first])
        memory, memory_t, w_r = segment_s[t % SEGMENT], segment_t[t % SEGMENT], w_read_s[t]
        # Read and softmax.
        d_w_r = torch.baddbmm(d_read_carry, g_reads, memory)
        d_sim = torch._softmax_backward_data(d_w_r, w_r, -1, w_r.dtype)
        if s.strength:
            d_beta = (d_sim * cos_s[t]).sum(-1)
            torch.mul(d_beta, softplus_slope[t], out=d_strength_s[t])
            d_sim = d_sim * beta[t]
        # Cosine similarity cos = (k_hat . M_n) / |M_n|.
        d_cos_scaled = d_sim.mul_(inv_mem_norm_s[t])  # d cos / |M_n|
        d_k_hat = torch.bmm(d_cos_scaled, memory_t)
        row_coef = (d_cos_scaled * cos_s[t]).sum(1).mul_(row_scale_s[t])
        d_mem.addcmul_(memory, row_coef.unsqueeze(1))
        d_mem.baddbmm_(key_hat_t[t], d_cos_scaled)
        d_mem.baddbmm_(g_reads_t, w_r)
        # Key normalisation k_hat = k / |k|.
        proj = (d_k_hat * key_hat_masked_s[t]).sum(-1, keepdim=True)
        d_keys = torch.addcmul(d_k_hat, key_hat_s[t], proj, value=-1.0).mul_(inv_key_norm_s[t])
        # Write: M_t = M_{t-1} (1 - onehot) + keys^T ww, ww = w_lu + alpha (w_r(t-1) - w_lu).
        d_keys.baddbmm_(w_write_s[t], d_mem.transpose(1, 2))
        d_ww = torch.bmm(keys_s[t], d_mem)
        d_alpha = (d_ww * gate_span_s[t]).sum(-1)
        d_read_carry = d_ww.mul_(alpha_s[t])
        if t > 0:
            d_mem.addcmul_(d_mem, zero_s[t], value=-1.0)
        torch.mul(d_keys.view(B, RW), key_slope_s[t], out=d_keys_s[t])
        torch.mul(d_alpha, gate_slope_s[t], out=d_gate_s[t])
        torch.addmm(g_h, d_ctrl_s[t], w_ctrl, out=d_h)
        # LSTM cell.
        d_cell.addcmul_(d_h, h_to_c_s[t])
        torch.mul(d_cell_ifg, factors_ifg[t], out=d_pre_ifg[t])
        torch.mul(d_h, fo_s[t], out=d_pre_o[t])
        if t > 0:
            d_cell.mul_(sig_f_s[t])
            torch.addmm(grads[t - 1], d_pre_s[t], w_rec, out=g)
    # Weight gradients: one matmul each over all (time * batch) rows.
    rows = T * B
    d_w_rec = d_pre.view(rows, -1).t().mm(hr[:-1].view(rows, -1))
    d_ctrl_flat = d_ctrl.view(rows, -1)
    d_w_ctrl = d_ctrl_flat.t().mm(hr[1:, :, :H].reshape(rows, H))
    d_b_ctrl = d_ctrl_flat.sum(0)
    return d_pre, d_w_rec, d_w_ctrl, d_b_ctrl


class _LRUASequence(torch.autograd.Function):
    """The recurrence with its hand-written backward; tensors saved for backward are
    only read by it, so ``retain_graph=True`` works."""

    @staticmethod
    def forward(ctx, gates_in, w_rec, w_ctrl, b_ctrl, slots, heads, decay, strength):
        s = _Sizes(gates_in, w_ctrl.shape[0], slots, heads, strength)
        gates_in = gates_in.contiguous()
        hr, saved = _run_forward(gates_in, w_rec.t().contiguous(), w_ctrl.t().contiguous(), b_ctrl,
                                 s, decay, store=True)
        ctx.sizes, ctx.saved = s, saved
        ctx.save_for_backward(w_rec, w_ctrl)
        ctx.hr = hr
        return hr[1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        w_rec, w_ctrl = ctx.saved_tensors
        d_pre, d_w_rec, d_w_ctrl, d_b_ctrl = _run_backward(
            grad_out.contiguous(), ctx.hr, ctx.saved, w_rec, w_ctrl, ctx.sizes)
        return d_pre, d_w_rec, d_w_ctrl, d_b_ctrl, None, None, None, None


def lrua_sequence(gates_in: torch.Tensor, recurrent_weight: torch.Tensor, control_weight: torch.Tensor,
                  control_bias: torch.Tensor, *, memory_slots: int, num_read_heads: int,
                  usage_decay: float, key_strength: bool) -> torch.Tensor:
    """Run MANN's controller and LRUA memory over a whole sequence.

    gates_in: (T, B, 4H) the input part of the LSTM gates (``MANN.input_proj`` of
    ``[features, label inputs]``); recurrent_weight: (4H, H + R*W) (``MANN.recurrent``);
    control_weight: (R*W + R [+ R], H) and control_bias: the key, write-gate and (with
    ``key_strength``) strength layers stacked in that order. Returns (T, B, H + R*W):
    ``[h_t, r_t]`` per step. Differentiable in every tensor argument.
    """
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (gates_in, recurrent_weight, control_weight, control_bias))
    if needs_grad:
        return _LRUASequence.apply(gates_in, recurrent_weight, control_weight, control_bias,
                                   memory_slots, num_read_heads, float(usage_decay), bool(key_strength))
    with torch.no_grad():
        w_rec_t, w_ctrl_t = recurrent_weight.t().contiguous(), control_weight.t().contiguous()
        chunks = []
        chunk = INFERENCE_CHUNK if gates_in.device.type == "cpu" else gates_in.shape[1]
        for part in gates_in.split(chunk, dim=1):  # episodes are independent
            s = _Sizes(part, control_weight.shape[0], memory_slots, num_read_heads, key_strength)
            hr, _ = _run_forward(part.contiguous(), w_rec_t, w_ctrl_t, control_bias, s, float(usage_decay), store=False)
            chunks.append(hr[1:])
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
