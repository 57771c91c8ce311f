"""The fast path of MANN with LRUA memory: the whole recurrence as one autograd Function.

It computes the same mathematics as ``memory/lrua/equations.py`` ``LRUAMemory.step`` driven by ``models.MANN``
(controller LSTM, LRUA write, cosine read, usage, least-used slots, and the optional key
strength), built for speed at small batches, where per-op dispatch, not arithmetic, is
what costs. tests/memory/test_fast.py checks outputs and gradients of every parameter against
the autograd backend (``--memory-backend autograd``) and against ``reference.py``.

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
    """Control rows, in order: keys (RW), write gates (R), [strengths (R)], [written vectors (RW)]."""

    def __init__(self, gates_in, control_rows, slots, heads, strength, write_vector=False):
        self.T, self.B, four_h = gates_in.shape
        self.H = four_h // 4
        self.R, self.N = heads, slots
        self.C = control_rows
        self.RW = (control_rows - heads * (2 if strength else 1)) // (2 if write_vector else 1)
        self.W = self.RW // heads
        self.F = self.H + self.RW
        self.strength, self.write_vector = strength, write_vector
        self.V = self.RW + self.R * (2 if strength else 1)  # first row of the written vectors


class _Forward:
    """The forward loop's buffers, their per-step views (made once, so the loop does no
    slicing) and one method per phase of a step: ``controller``, ``interface``, ``write``,
    ``read``, ``usage``.

    With ``store`` every buffer backward reads has a leading time axis (``saved()``);
    without, buffers hold one or two steps and are reused. ``hr`` (T+1, B, F) has hr[0] = 0
    and hr[t+1] = [h_t, r_t].

    The memory is kept transposed, (B, W, N) with slot n in column n: then the products
    with keys and read weights are batched matmuls that MKL runs two to three times
    faster at these sizes than with (B, N, W).
    """

    def __init__(self, gates_in, w_rec_t, w_ctrl_t, b_ctrl, s: _Sizes, decay: float, store: bool, ctrl_in=None):
        self.w_rec_t, self.w_ctrl_t, self.b_ctrl, self.decay, self.strength = w_rec_t, w_ctrl_t, b_ctrl, decay, s.strength
        self.write_vector = s.write_vector
        self.ctrl_in = ctrl_in.unbind(0) if ctrl_in is not None else None
        self._allocate(gates_in, s, store)
        self._make_views(gates_in, s, store)

    def _allocate(self, gates_in, s: _Sizes, store: bool) -> None:
        T, B, H, R, N, W = s.T, s.B, s.H, s.R, s.N, s.W
        opts = dict(dtype=gates_in.dtype, device=gates_in.device)

        def buf(*shape, extra=0, ring=1):
            return torch.empty(((T + extra) if store else ring), *shape, **opts)

        self.hr = torch.empty(T + 1, B, s.F, **opts)
        self.hr[0] = 0.0
        self.cells = buf(B, H, extra=1, ring=2)
        self.cells[0] = 0.0
        self.acts = buf(B, 4 * H)  # sigma(i), sigma(f), tanh(g), sigma(o)
        self.tanh_c = buf(B, H)
        self.ctrl = buf(B, s.C)  # tanh(keys), sigma(gate) [, strength logit] [, tanh(written vector)]
        self.mem = torch.empty(2, B, W, N, **opts)  # this step's and the previous step's memory
        # Storing M_t of every step would stream T memories through the caches twice; the
        # memory at the start of every segment of SEGMENT steps is kept instead, and backward
        # recomputes a segment's memories (the same two ops, so bit-identical) before using them.
        self.checkpoints = torch.empty((T + SEGMENT - 1) // SEGMENT, B, W, N, **opts) if store else None
        self.key_norm, self.key_hat = buf(B, R, 1), buf(B, R, W)
        self.mem_norm, self.cos = buf(B, N), buf(B, R, N)
        self.beta = buf(B, R, 1) if s.strength else None
        self.w_read, self.w_write = buf(B, R, N, ring=2), buf(B, R, N)
        self.least = buf(B, 2, N, extra=1, ring=2)  # [one-hot of the row to zero, w_lu]
        self.usage_now = torch.zeros(B, N, **opts)
        self.least_used = LeastUsed(self.usage_now, R)
        self.least_used.select(self.usage_now, self.least[0])
        self.memory_init = self.checkpoints[0] if store else torch.empty(B, W, N, **opts)
        self.memory_init.fill_(MEMORY_INIT)
        # Scratch buffers of one step.
        self.pre, self.z = torch.empty(B, 4 * H, **opts), torch.empty(B, s.C, **opts)
        self.reads = torch.empty(B, R, W, **opts)
        self.sum_read, self.sum_write = torch.empty(B, N, **opts), torch.empty(B, N, **opts)

    def _make_views(self, gates_in, s: _Sizes, store: bool) -> None:
        T, B, H, R, RW = s.T, s.B, s.H, s.R, s.RW
        acts, cells, ctrl, least, w_read, mem = self.acts, self.cells, self.ctrl, self.least, self.w_read, self.mem

        def steps(buffer, shift=0):
            return _steps(buffer, T, shift)

        self.gates, self.hr_in = gates_in.unbind(0), self.hr.unbind(0)
        self.h_out, self.r_out = self.hr[1:, :, :H].unbind(0), self.hr[1:, :, H:].unbind(0)
        self.pre_g, self.z_keys = self.pre[:, 2 * H:3 * H], self.z[:, :RW]
        self.z_gate, self.z_strength, self.z_content = self.z[:, RW:RW + R], self.z[:, RW + R:s.V], self.z[:, s.V:]
        self.act, self.act_i, self.act_f = steps(acts), steps(acts[..., :H]), steps(acts[..., H:2 * H])
        self.act_g, self.act_o = steps(acts[..., 2 * H:3 * H]), steps(acts[..., 3 * H:])
        self.c_prev, self.c_next, self.tanh_cell = steps(cells), steps(cells, 1), steps(self.tanh_c)
        self.keys_flat, self.gate = steps(ctrl[..., :RW]), steps(ctrl[..., RW:RW + R])
        self.strength_logit, self.content_flat = steps(ctrl[..., RW + R:s.V]), steps(ctrl[..., s.V:])
        keys_3d = ctrl[..., :RW].unflatten(-1, (R, s.W))
        self.keys_s = steps(keys_3d)
        written = ctrl[..., s.V:].unflatten(-1, (R, s.W)) if s.write_vector else keys_3d
        self.written_t = steps(written.transpose(-1, -2))  # what eq. 8 adds: the keys, or their own vectors
        self.alpha_s = steps(ctrl[..., RW:RW + R].unsqueeze(-1))
        self.zero_s, self.least_next = steps(least[:, :, :1]), steps(least, 1)
        self.w_lu_s = steps(least[:, :, 1:].expand(-1, -1, R, -1))
        self.w_read_s, self.w_write_s = steps(w_read), steps(self.w_write)
        self.w_read_prev = [torch.zeros_like(w_read[0])] + _steps(w_read, T - 1)
        self.mem_s, self.mem_t = _steps(mem, T), _steps(mem.transpose(-1, -2), T)
        if store:  # the last memory of a segment goes straight into the next segment's checkpoint
            for t in range(SEGMENT - 1, T - 1, SEGMENT):
                checkpoint = self.checkpoints[(t + 1) // SEGMENT]
                self.mem_s[t], self.mem_t[t] = checkpoint, checkpoint.transpose(-1, -2)
        self.key_norm_s, self.key_hat_s = steps(self.key_norm), steps(self.key_hat)
        self.mem_norm_s, self.mem_norm_row = steps(self.mem_norm), steps(self.mem_norm.unsqueeze(-2))
        self.cos_s = steps(self.cos)
        self.beta_s = steps(self.beta) if s.strength else None
        self.reads_flat = self.reads.view(B, RW)

    def controller(self, t: int) -> torch.Tensor:
        """The LSTM cell; the [x_t, y_{t-1}] part of the gates was projected outside. Returns h_t."""
        pre = torch.addmm(self.gates[t], self.hr_in[t], self.w_rec_t, out=self.pre)
        torch.sigmoid(pre, out=self.act[t])
        torch.tanh(self.pre_g, out=self.act_g[t])
        c = torch.mul(self.act_f[t], self.c_prev[t], out=self.c_next[t])
        c.addcmul_(self.act_i[t], self.act_g[t])
        torch.tanh(c, out=self.tanh_cell[t])
        return torch.mul(self.act_o[t], self.tanh_cell[t], out=self.h_out[t])

    def interface(self, t: int, h: torch.Tensor) -> None:
        """Keys, write gate (and strength logit, and the strength; the written vector) from one matmul
        (plus the step input's part, computed outside, with ``memory_input``)."""
        torch.addmm(self.b_ctrl, h, self.w_ctrl_t, out=self.z)
        if self.ctrl_in is not None:
            self.z.add_(self.ctrl_in[t])
        torch.tanh(self.z_keys, out=self.keys_flat[t])
        if self.write_vector:
            torch.tanh(self.z_content, out=self.content_flat[t])
        torch.sigmoid(self.z_gate, out=self.gate[t])
        if self.strength:
            self.strength_logit[t].copy_(self.z_strength)
            self.beta_s[t].copy_(torch.nn.functional.softplus(self.z_strength).add_(1.0).unsqueeze(-1))

    def write(self, t: int, memory_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. 7-8: the write weights ww = lerp(w_lu, w_r(t-1), alpha) and the write. Returns (ww, M_t)."""
        ww = torch.lerp(self.w_lu_s[t], self.w_read_prev[t], self.alpha_s[t], out=self.w_write_s[t])
        return ww, _write(memory_prev, self.zero_s[t], self.written_t[t], ww, out=self.mem_s[t])

    def read(self, t: int, memory: torch.Tensor) -> torch.Tensor:
        """Eqs. 2-4: cosine similarity through the slot norms, softmax over slots; r_t goes into hr. Returns w_r."""
        keys = self.keys_s[t]
        k_norm = torch.linalg.vector_norm(keys, dim=-1, keepdim=True, out=self.key_norm_s[t]).clamp_min_(COSINE_EPS)
        k_hat = torch.div(keys, k_norm, out=self.key_hat_s[t])
        torch.linalg.vecdot(memory, memory, dim=1, out=self.mem_norm_s[t]).sqrt_().clamp_min_(COSINE_EPS)
        sim = torch.bmm(k_hat, memory, out=self.cos_s[t]).div_(self.mem_norm_row[t])
        if self.strength:
            sim = sim * self.beta_s[t]
        w_r = torch.softmax(sim, dim=-1, out=self.w_read_s[t])
        torch.bmm(w_r, self.mem_t[t], out=self.reads)
        self.r_out[t].copy_(self.reads_flat)
        return w_r

    def usage(self, t: int, w_r: torch.Tensor, ww: torch.Tensor) -> None:
        """Usage (eq. 5) and the least-used slots of the next step (eq. 6); no gradient."""
        usage = self.usage_now
        torch.add(torch.sum(w_r, 1, out=self.sum_read), usage, alpha=self.decay, out=usage)
        usage.add_(torch.sum(ww, 1, out=self.sum_write))
        self.least_used.select(usage, self.least_next[t])

    def saved(self) -> dict:
        """The per-step buffers backward reads."""
        return {name: getattr(self, name) for name in ("cells", "acts", "tanh_c", "ctrl", "checkpoints", "key_norm",
                                                        "key_hat", "mem_norm", "cos", "beta", "w_read", "w_write", "least")}


def _run_forward(gates_in, w_rec_t, w_ctrl_t, b_ctrl, s: _Sizes, decay: float, store: bool, ctrl_in=None):
    """The forward loop: controller, interface, write, read, usage, step by step. Returns hr
    (T+1, B, F) with hr[0] = 0 and hr[t+1] = [h_t, r_t], and (when ``store``) the dict of
    per-step buffers backward reads (``_Forward``)."""
    f = _Forward(gates_in, w_rec_t, w_ctrl_t, b_ctrl, s, decay, store, ctrl_in)
    memory = f.memory_init
    for t in range(s.T):
        h = f.controller(t)
        f.interface(t, h)
        ww, memory = f.write(t, memory)
        w_r = f.read(t, memory)
        f.usage(t, w_r, ww)
    return f.hr, (f.saved() if store else None)


class _Backward:
    """Backpropagation through time: the buffers and per-step views of the backward loop and
    one method per phase of a step, in reverse order: ``memories`` (recompute the segment),
    ``read_weights``, ``similarity``, ``key_norm``, ``write``, ``interface``, ``controller``.

    Everything that does not depend on the incoming gradient (activation derivatives,
    reciprocal norms, masks) is computed for all steps at once (``_slopes``), so the loop
    runs only what the recurrence forces. Carried from step to step: d M_t (``d_mem``,
    transposed like M), d c_t (``d_cell``), d [h_t, r_t] over all paths (``g``) and d w_r(t)
    through the write weights of step t+1 (``d_read_carry``).
    """

    def __init__(self, grad_out, saved, w_rec, w_ctrl, s: _Sizes):
        self.w_rec, self.w_ctrl, self.strength, self.T, self.B, self.RW = w_rec, w_ctrl, s.strength, s.T, s.B, s.RW
        self.write_vector = s.write_vector
        self._slopes(saved, s)
        self._allocate(grad_out, saved, s)
        self._make_views(grad_out, saved, s)

    def _slopes(self, saved, s: _Sizes) -> None:
        """The factors of the backward that do not depend on the incoming gradient, all steps at once."""
        T, H, R, RW = s.T, s.H, s.R, s.RW
        acts, cells, tanh_c, ctrl, least = saved["acts"], saved["cells"], saved["tanh_c"], saved["ctrl"], saved["least"]
        sig_i, sig_f, tanh_g, sig_o = acts.unflatten(-1, (4, H)).unbind(2)
        # LSTM: d pre = [d_c tanh(g) sigma'(i), d_c c_prev sigma'(f), d_c sigma(i) tanh'(g), d_h tanh(c) sigma'(o)].
        factors = torch.empty_like(acts)
        fi, ff, fg, fo = factors.unflatten(-1, (4, H)).unbind(2)
        torch.mul(tanh_g, sig_i * (1.0 - sig_i), out=fi)
        torch.mul(cells[:-1], sig_f * (1.0 - sig_f), out=ff)
        torch.mul(sig_i, 1.0 - tanh_g * tanh_g, out=fg)
        torch.mul(tanh_c, sig_o * (1.0 - sig_o), out=fo)
        self.factors_ifg, self.fo_s, self.sig_f_s = factors.unflatten(-1, (4, H))[:, :, :3].unbind(0), fo.unbind(0), sig_f.unbind(0)
        self.h_to_c_s = (sig_o * (1.0 - tanh_c * tanh_c)).unbind(0)  # d c / d h through h = sigma(o) tanh(c)
        keys_all, alpha_all = ctrl[:, :, :RW], ctrl[:, :, RW:RW + R]
        self.key_slope_s = (1.0 - keys_all * keys_all).unbind(0)  # tanh'
        content_all = ctrl[:, :, s.V:]
        self.content_slope_s = (1.0 - content_all * content_all).unbind(0) if s.write_vector else None
        self.gate_slope_s = (alpha_all * (1.0 - alpha_all)).unbind(0)  # sigma'
        # Norms: 1/|x|, and the projection term that the clamp (|x| < eps) switches off.
        inv_mem_norm = saved["mem_norm"].reciprocal().unsqueeze(2)  # (T, B, 1, N)
        self.inv_mem_norm_s = inv_mem_norm.unbind(0)
        self.row_scale_s = torch.where(saved["mem_norm"] > COSINE_EPS, -inv_mem_norm.squeeze(2), 0.0).unbind(0)
        self.inv_key_norm_s = saved["key_norm"].reciprocal().unbind(0)
        self.key_hat_masked_s = (saved["key_hat"] * (saved["key_norm"] > COSINE_EPS)).unbind(0)
        # d alpha = sum_n d ww (w_r(t-1) - w_lu(t)).
        gate_span = torch.empty_like(saved["w_write"])
        gate_span[0] = least[0, :, 1:].neg()
        torch.sub(saved["w_read"][:-1], least[1:T, :, 1:], out=gate_span[1:])
        self.gate_span_s = gate_span.unbind(0)
        self.softplus_slope_s = torch.sigmoid(ctrl[:, :, RW + R:s.V]).unbind(0) if s.strength else None

    def _allocate(self, grad_out, saved, s: _Sizes) -> None:
        opts = dict(dtype=grad_out.dtype, device=grad_out.device)
        self.checkpoints = saved["checkpoints"]
        self.d_pre = torch.empty_like(saved["acts"])  # (T, B, 4H) = d gates_in
        self.d_ctrl = torch.empty_like(saved["ctrl"])  # (T, B, RW + R [+ R]) d of the key/gate/strength logits
        self.segment = torch.empty(SEGMENT, *self.checkpoints.shape[1:], **opts)
        self.d_mem = torch.zeros_like(self.checkpoints[0])  # d M_t (transposed, like M) from later steps
        self.d_read_carry = torch.zeros_like(saved["w_read"][0])  # d w_r(t) through the write weights of step t+1
        self.d_cell = torch.zeros_like(saved["cells"][0])
        self.g = torch.empty(s.B, s.F, **opts)  # d [h_t, r_t], all paths
        self.g.copy_(grad_out[s.T - 1])
        self.d_h = torch.empty(s.B, s.H, **opts)

    def _make_views(self, grad_out, saved, s: _Sizes) -> None:
        B, H, R, W, RW = s.B, s.H, s.R, s.W, s.RW
        ctrl, d_ctrl, d_pre, key_hat = saved["ctrl"], self.d_ctrl, self.d_pre, saved["key_hat"]
        self.g_h, self.g_reads = self.g[:, :H], self.g[:, H:].unflatten(-1, (R, W))
        self.g_reads_t = self.g_reads.transpose(1, 2)
        self.grads = grad_out.unbind(0)
        keys_3d = ctrl[:, :, :RW].unflatten(-1, (R, W))
        written = ctrl[:, :, s.V:].unflatten(-1, (R, W)) if s.write_vector else keys_3d
        self.written_s, self.written_t = written.unbind(0), written.transpose(-1, -2).unbind(0)
        self.alpha_s = ctrl[:, :, RW:RW + R].unsqueeze(-1).unbind(0)
        self.zero_s = saved["least"][:, :, :1].unbind(0)
        self.segment_s, self.segment_t = self.segment.unbind(0), self.segment.transpose(-1, -2).unbind(0)
        self.w_read_s, self.w_write_s = saved["w_read"].unbind(0), saved["w_write"].unbind(0)
        self.cos_s = saved["cos"].unbind(0)
        self.beta_s = saved["beta"].unbind(0) if s.strength else None
        self.key_hat_s, self.key_hat_t = key_hat.unbind(0), key_hat.transpose(-1, -2).unbind(0)
        self.d_keys_s, self.d_gate_s = d_ctrl[..., :RW].unbind(0), d_ctrl[..., RW:RW + R].unbind(0)
        self.d_strength_s, self.d_ctrl_s = d_ctrl[..., RW + R:s.V].unbind(0), d_ctrl.unbind(0)
        self.d_content_s = d_ctrl[..., s.V:].unflatten(-1, (R, W)).unbind(0) if s.write_vector else None
        self.d_pre_s, self.d_pre_o = d_pre.unbind(0), d_pre[..., 3 * H:].unbind(0)
        self.d_pre_ifg = d_pre.unflatten(-1, (4, H))[:, :, :3].unbind(0)
        self.d_cell_ifg = self.d_cell.unsqueeze(1).expand(B, 3, H)

    def memories(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """M_t and its transpose; at the last step of a segment, first recompute the segment's
        memories from its checkpoint (the forward's two ops, so bit-identical)."""
        if t == self.T - 1 or t % SEGMENT == SEGMENT - 1:
            first = t - t % SEGMENT
            memory = self.checkpoints[first // SEGMENT]
            for u in range(first, t + 1):
                memory = _write(memory, self.zero_s[u], self.written_t[u], self.w_write_s[u], out=self.segment_s[u - first])
        return self.segment_s[t % SEGMENT], self.segment_t[t % SEGMENT]

    def read_weights(self, t: int, memory: torch.Tensor) -> torch.Tensor:
        """r = w_r M, w_r = softmax(beta cos): d w_r (reads and the next write), the softmax,
        the strength. Returns d (beta cos) / beta, i.e. d cos."""
        w_r = self.w_read_s[t]
        d_w_r = torch.baddbmm(self.d_read_carry, self.g_reads, memory)
        d_sim = torch._softmax_backward_data(d_w_r, w_r, -1, w_r.dtype)
        if self.strength:
            d_beta = (d_sim * self.cos_s[t]).sum(-1)
            torch.mul(d_beta, self.softplus_slope_s[t], out=self.d_strength_s[t])
            d_sim = d_sim * self.beta_s[t]
        return d_sim

    def similarity(self, t: int, d_cos: torch.Tensor, memory: torch.Tensor, memory_t: torch.Tensor) -> torch.Tensor:
        """cos = (k_hat . M_n) / |M_n|: adds this step's read gradient of M_t (the cosine's,
        then r = w_r M's) into d_mem. Returns d k_hat."""
        d_cos_scaled = d_cos.mul_(self.inv_mem_norm_s[t])  # d cos / |M_n|
        d_k_hat = torch.bmm(d_cos_scaled, memory_t)
        row_coef = (d_cos_scaled * self.cos_s[t]).sum(1).mul_(self.row_scale_s[t])
        self.d_mem.addcmul_(memory, row_coef.unsqueeze(1))
        self.d_mem.baddbmm_(self.key_hat_t[t], d_cos_scaled)
        self.d_mem.baddbmm_(self.g_reads_t, self.w_read_s[t])
        return d_k_hat

    def key_norm(self, t: int, d_k_hat: torch.Tensor) -> torch.Tensor:
        """k_hat = k / |k|. Returns d keys (B, R, W)."""
        proj = (d_k_hat * self.key_hat_masked_s[t]).sum(-1, keepdim=True)
        return torch.addcmul(d_k_hat, self.key_hat_s[t], proj, value=-1.0).mul_(self.inv_key_norm_s[t])

    def write(self, t: int, d_keys: torch.Tensor) -> torch.Tensor:
        """M_t = M_{t-1} (1 - onehot) + v^T ww, ww = w_lu + alpha (w_r(t-1) - w_lu), v the keys (or,
        ``write_vector``, tanh of their own logits): adds the write's term to d keys (or sets d of the
        written vectors' logits), sets d_read_carry, turns d_mem into d M_{t-1}. Returns d alpha."""
        d_mem = self.d_mem
        if self.write_vector:
            d_v = torch.bmm(self.w_write_s[t], d_mem.transpose(1, 2))
            torch.mul(d_v, self.content_slope_s[t].view_as(d_v), out=self.d_content_s[t])
        else:
            d_keys.baddbmm_(self.w_write_s[t], d_mem.transpose(1, 2))
        d_ww = torch.bmm(self.written_s[t], d_mem)
        d_alpha = (d_ww * self.gate_span_s[t]).sum(-1)
        self.d_read_carry = d_ww.mul_(self.alpha_s[t])
        if t > 0:
            d_mem.addcmul_(d_mem, self.zero_s[t], value=-1.0)
        return d_alpha

    def interface(self, t: int, d_keys: torch.Tensor, d_alpha: torch.Tensor) -> torch.Tensor:
        """keys = tanh(.), alpha = sigma(.) of one linear layer of h_t. Returns d h_t (all paths)."""
        torch.mul(d_keys.view(self.B, self.RW), self.key_slope_s[t], out=self.d_keys_s[t])
        torch.mul(d_alpha, self.gate_slope_s[t], out=self.d_gate_s[t])
        return torch.addmm(self.g_h, self.d_ctrl_s[t], self.w_ctrl, out=self.d_h)

    def controller(self, t: int, d_h: torch.Tensor) -> None:
        """The LSTM cell: d of its gates (d gates_in of step t); d c_{t-1} and d [h, r]_{t-1} for the step before."""
        self.d_cell.addcmul_(d_h, self.h_to_c_s[t])
        torch.mul(self.d_cell_ifg, self.factors_ifg[t], out=self.d_pre_ifg[t])
        torch.mul(d_h, self.fo_s[t], out=self.d_pre_o[t])
        if t > 0:
            self.d_cell.mul_(self.sig_f_s[t])
            torch.addmm(self.grads[t - 1], self.d_pre_s[t], self.w_rec, out=self.g)


def _weight_grads(d_pre, d_ctrl, hr, s: _Sizes):
    """d w_rec, d w_ctrl, d b_ctrl: one matmul each over all (time * batch) rows."""
    rows = s.T * s.B
    d_w_rec = d_pre.view(rows, -1).t().mm(hr[:-1].view(rows, -1))
    d_ctrl_flat = d_ctrl.view(rows, -1)
    d_w_ctrl = d_ctrl_flat.t().mm(hr[1:, :, :s.H].reshape(rows, s.H))
    return d_w_rec, d_w_ctrl, d_ctrl_flat.sum(0)


def _run_backward(grad_out, hr, saved, w_rec, w_ctrl, s: _Sizes):
    """Backpropagation through time, step by step in reverse (``_Backward``). grad_out:
    (T, B, F), the gradient of [h_t, r_t]. Returns (d gates_in, d of the control logits (= d of
    ``control_input``), d w_rec, d w_ctrl, d b_ctrl)."""
    b = _Backward(grad_out, saved, w_rec, w_ctrl, s)
    for t in range(s.T - 1, -1, -1):
        memory, memory_t = b.memories(t)
        d_cos = b.read_weights(t, memory)
        d_k_hat = b.similarity(t, d_cos, memory, memory_t)
        d_keys = b.key_norm(t, d_k_hat)
        d_alpha = b.write(t, d_keys)
        d_h = b.interface(t, d_keys, d_alpha)
        b.controller(t, d_h)
    return (b.d_pre, b.d_ctrl, *_weight_grads(b.d_pre, b.d_ctrl, hr, s))


class _LRUASequence(torch.autograd.Function):
    """The recurrence with its hand-written backward; tensors saved for backward are
    only read by it, so ``retain_graph=True`` works."""

    @staticmethod
    def forward(ctx, gates_in, w_rec, w_ctrl, b_ctrl, ctrl_in, slots, heads, decay, strength, write_vector):
        s = _Sizes(gates_in, w_ctrl.shape[0], slots, heads, strength, write_vector)
        gates_in = gates_in.contiguous()
        hr, saved = _run_forward(gates_in, w_rec.t().contiguous(), w_ctrl.t().contiguous(), b_ctrl,
                                 s, decay, store=True, ctrl_in=None if ctrl_in is None else ctrl_in.contiguous())
        ctx.has_ctrl_in = ctrl_in is not None
        ctx.sizes, ctx.saved = s, saved
        ctx.save_for_backward(w_rec, w_ctrl)
        ctx.hr = hr
        return hr[1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        w_rec, w_ctrl = ctx.saved_tensors
        d_pre, d_ctrl, d_w_rec, d_w_ctrl, d_b_ctrl = _run_backward(
            grad_out.contiguous(), ctx.hr, ctx.saved, w_rec, w_ctrl, ctx.sizes)
        return (d_pre, d_w_rec, d_w_ctrl, d_b_ctrl, d_ctrl if ctx.has_ctrl_in else None,
                None, None, None, None, None)


def lrua_sequence(gates_in: torch.Tensor, recurrent_weight: torch.Tensor, control_weight: torch.Tensor,
                  control_bias: torch.Tensor, *, memory_slots: int, num_read_heads: int,
                  usage_decay: float, key_strength: bool, control_input: torch.Tensor | None = None,
                  write_vector: bool = False) -> torch.Tensor:
    """Run MANN's controller and LRUA memory over a whole sequence.

    gates_in: (T, B, 4H) the input part of the LSTM gates (``MANN.input_proj`` of
    ``[features, label inputs]``); recurrent_weight: (4H, H + R*W) (``MANN.recurrent``);
    control_weight: (R*W + R [+ R] [+ R*W], H) and control_bias: the key, write-gate, (with
    ``key_strength``) strength and (with ``write_vector``) written-vector layers stacked in that
    order; control_input: None, or (T, B, C) added to the control logits of each step (the step
    input's part of those layers, ``memory_input``). Returns (T, B, H + R*W): ``[h_t, r_t]`` per
    step. Differentiable in every tensor argument.
    """
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (gates_in, recurrent_weight, control_weight, control_bias,
                                                    control_input))
    if needs_grad:
        return _LRUASequence.apply(gates_in, recurrent_weight, control_weight, control_bias, control_input,
                                   memory_slots, num_read_heads, float(usage_decay), bool(key_strength),
                                   bool(write_vector))
    with torch.no_grad():
        w_rec_t, w_ctrl_t = recurrent_weight.t().contiguous(), control_weight.t().contiguous()
        chunks = []
        chunk = INFERENCE_CHUNK if gates_in.device.type == "cpu" else gates_in.shape[1]
        parts = gates_in.split(chunk, dim=1)  # episodes are independent
        inputs = control_input.split(chunk, dim=1) if control_input is not None else [None] * len(parts)
        for part, ctrl_in in zip(parts, inputs):
            s = _Sizes(part, control_weight.shape[0], memory_slots, num_read_heads, key_strength, write_vector)
            hr, _ = _run_forward(part.contiguous(), w_rec_t, w_ctrl_t, control_bias, s, float(usage_decay),
                                 store=False, ctrl_in=None if ctrl_in is None else ctrl_in.contiguous())
            chunks.append(hr[1:])
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
