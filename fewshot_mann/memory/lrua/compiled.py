"""MANN's LRUA recurrence as two whole-sequence graphs for ``torch.compile`` (opt-in).

The same mathematics as ``fast.py`` (and so as ``memory.LRUAMemory`` + ``models.MANN``),
written without ``out=`` buffers or views made per step, so that Dynamo can trace the
whole time loop (unrolled over the T steps of a fixed shape) into one graph for the
forward and one for the hand-written backward, and inductor can fuse each step's
elementwise work into a few generated C++ loops. Per-step dispatch, most of what a step
costs in eager mode at small batches, then disappears.

- ``compiled_lrua_sequence`` has ``fast.lrua_sequence``'s signature and results (to
  float rounding: inductor fuses and reorders float arithmetic; the tests hold it to
  1e-5 against the eager fast path and the reference).
- compiled graphs are cached per (shape, dtype, device, options) in this process, and on
  disk by inductor's FX graph cache, so a second process skips inductor's lowering and
  the C++ compile (Dynamo still traces). Measured at the paper's sizes on 2 busy CPU
  cores: about 3 minutes of compiling the first time, under 10 s from the cache.
- only training uses it (``MANN.compile``, ``--compile``): evaluation batches vary in
  size and every new shape would compile again.
- where ``torch.compile`` cannot run (``compile_unavailable()`` says why) or compiling
  fails, one warning, and the eager code runs instead (the same function uncompiled for
  a call already under way, then ``fast.lrua_sequence``).

As in fast.py, forward stores the memory only at the start of every SEGMENT steps and
backward recomputes a segment's memories just before using them, so they stay in cache.
"""
from __future__ import annotations

import functools
import shutil
import warnings

import torch
from torch.autograd.function import once_differentiable

from fewshot_mann.memory.lrua.equations import COSINE_EPS, MEMORY_INIT

SEGMENT = 5  # as fast.py: backward recomputes the memories of SEGMENT steps from one stored memory


def _least_used(usage: torch.Tensor, slot_index: torch.Tensor, n: int) -> torch.Tensor:
    """(B, 2, N): [one-hot of the least-used slot, n-hot of the n least-used slots].

    As ``fast._LeastUsed``: for float32 the key ``bits * N + slot`` orders like usage with
    ties to the lower slot (the stable sort's choice); other dtypes sort stably."""
    slots = usage.shape[-1]
    if usage.dtype == torch.float32:
        key = usage.view(torch.int32).to(torch.int64) * slots + slot_index
        chosen = torch.topk(key, n, dim=-1, largest=False, sorted=True).values
        bounds = torch.stack([chosen[:, 0], chosen[:, n - 1]], dim=1)  # (B, 2)
        return (key.unsqueeze(1) <= bounds.unsqueeze(-1)).to(usage.dtype)
    order = torch.sort(usage, dim=-1, stable=True).indices[:, :n]
    w_lu = torch.zeros_like(usage).scatter(1, order, 1.0)
    zero = torch.zeros_like(usage).scatter(1, order[:, :1], 1.0)
    return torch.stack([zero, w_lu], dim=1)


def sequence_forward(gates_in, w_rec_t, w_ctrl_t, b_ctrl, *, slots: int, heads: int, decay: float,
                     strength: bool, store: bool):
    """gates_in (T, B, 4H); w_rec_t (H + R*W, 4H); w_ctrl_t (H, C); b_ctrl (C,).
    Returns hr (T, B, H + R*W), row t = [h_t, r_t], and (with ``store``) the tuple of
    per-step tensors ``sequence_backward`` reads, each with a leading time axis."""
    T, B, four_h = gates_in.shape
    H, R, N = four_h // 4, heads, slots
    RW = w_ctrl_t.shape[1] - R * (2 if strength else 1)
    W = RW // R
    opts = dict(dtype=gates_in.dtype, device=gates_in.device)
    slot_index = torch.arange(N, device=gates_in.device)
    hr = torch.zeros(B, H + RW, **opts)
    c = torch.zeros(B, H, **opts)
    memory = torch.full((B, W, N), MEMORY_INIT, **opts)  # transposed, as in fast.py
    usage = torch.zeros(B, N, **opts)
    w_read = torch.zeros(B, R, N, **opts)
    least = _least_used(usage, slot_index, R)
    keep = {k: [] for k in ("acts", "cells", "tanh_c", "ctrl", "checkpoints", "key_norm", "key_hat", "mem_norm",
                            "cos", "beta", "w_read", "w_write", "least")}
    outs = []
    for t in range(T):
        # Controller: LSTM cell on [x_t, y_{t-1}] (projected outside) and [h, r] of t-1.
        # Matmuls then adds (not addmm/baddbmm): inductor fuses the add into the next
        # elementwise kernel instead of copying the addend into the matmul's output first.
        pre = gates_in[t] + hr @ w_rec_t
        sig = torch.sigmoid(pre)
        tanh_g = torch.tanh(pre[:, 2 * H:3 * H])
        c_prev = c
        c = sig[:, H:2 * H] * c_prev + sig[:, :H] * tanh_g
        tanh_c = torch.tanh(c)
        h = sig[:, 3 * H:] * tanh_c
        z = h @ w_ctrl_t + b_ctrl
        keys_flat, alpha = torch.tanh(z[:, :RW]), torch.sigmoid(z[:, RW:RW + R])
        keys = keys_flat.view(B, R, W)
        # Write (eqs. 7-8): zero the least-used slot, add the keys with the write weights.
        zero, w_lu = least[:, :1], least[:, 1:]
        if store and t % SEGMENT == 0:
            keep["checkpoints"].append(memory)
        w_write = torch.lerp(w_lu.expand(B, R, N), w_read, alpha.unsqueeze(-1))
        memory = memory - memory * zero + torch.bmm(keys.transpose(1, 2), w_write)
        # Read (eqs. 2-4): cosine similarity through the norms, softmax over slots.
        key_norm = torch.linalg.vector_norm(keys, dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        key_hat = keys / key_norm
        mem_norm = (memory * memory).sum(1).sqrt().clamp_min(COSINE_EPS)
        cos = torch.bmm(key_hat, memory) / mem_norm.unsqueeze(1)
        sim = cos
        if strength:
            beta = torch.nn.functional.softplus(z[:, RW + R:]).add(1.0).unsqueeze(-1)
            sim = cos * beta
            keep["beta"].append(beta)
        w_read = torch.softmax(sim, dim=-1)
        reads = torch.bmm(w_read, memory.transpose(1, 2)).reshape(B, RW)
        hr = torch.cat([h, reads], dim=-1)
        outs.append(hr)
        # Usage (eq. 5) and the next step's least-used slots (eq. 6); no gradient.
        usage = (w_read.sum(1) + decay * usage) + w_write.sum(1)
        if store:
            for name, value in (("acts", torch.cat([sig[:, :2 * H], tanh_g, sig[:, 3 * H:]], -1)),
                                ("cells", c_prev), ("tanh_c", tanh_c),
                                ("ctrl", torch.cat([keys_flat, alpha, z[:, RW + R:]], -1)),
                                ("key_norm", key_norm), ("key_hat", key_hat),
                                ("mem_norm", mem_norm), ("cos", cos), ("w_read", w_read),
                                ("w_write", w_write), ("least", least)):
                keep[name].append(value)
        least = _least_used(usage, slot_index, R)
    hr_all = torch.stack(outs)
    if not store:
        return hr_all, None
    keep["least"].append(least)
    return hr_all, tuple(torch.stack(v) if v else None for v in keep.values())


def sequence_backward(grad_out, hr_all, saved, w_rec, w_ctrl, *, heads: int, strength: bool):
    """Backpropagation through time, as ``fast._run_backward`` (same formulas, every
    step's memory stored). grad_out (T, B, H + R*W). Returns (d gates_in, d w_rec,
    d w_ctrl, d b_ctrl)."""
    acts, cells, tanh_c, ctrl, checkpoints, key_norm, key_hat, mem_norm, cos, beta, w_read, w_write, least = saved
    T, B, four_h = acts.shape
    H, R, N = four_h // 4, heads, checkpoints.shape[-1]
    RW = hr_all.shape[-1] - H
    W = RW // R
    sig_i, sig_f, tanh_g, sig_o = acts.unflatten(-1, (4, H)).unbind(2)
    # Everything not depending on the incoming gradient, for all steps at once.
    f_ifg = torch.stack([tanh_g * sig_i * (1.0 - sig_i), cells * sig_f * (1.0 - sig_f),
                         sig_i * (1.0 - tanh_g * tanh_g)], dim=2)  # (T, B, 3, H)
    f_o = tanh_c * sig_o * (1.0 - sig_o)
    h_to_c = sig_o * (1.0 - tanh_c * tanh_c)
    keys_all, alpha_all = ctrl[:, :, :RW], ctrl[:, :, RW:RW + R]
    key_slope, gate_slope = 1.0 - keys_all * keys_all, alpha_all * (1.0 - alpha_all)
    inv_mem_norm = mem_norm.reciprocal().unsqueeze(2)  # (T, B, 1, N)
    row_scale = torch.where(mem_norm > COSINE_EPS, -mem_norm.reciprocal(), 0.0)
    inv_key_norm = key_norm.reciprocal()
    key_hat_masked = key_hat * (key_norm > COSINE_EPS)
    zero_all, w_lu_all = least[:, :, :1], least[:, :, 1:]
    gate_span = torch.cat([-w_lu_all[:1].expand(1, B, R, N), w_read[:-1] - w_lu_all[1:T]], 0)
    softplus_slope = torch.sigmoid(ctrl[:, :, RW + R:]) if strength else None
    keys3 = keys_all.unflatten(-1, (R, W))

    d_mem = torch.zeros_like(checkpoints[0])
    d_read_carry = torch.zeros_like(w_read[0])
    d_cell = torch.zeros_like(cells[0])
    g = grad_out[T - 1]
    d_pre_steps, d_ctrl_steps = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        if t == T - 1 or t % SEGMENT == SEGMENT - 1:  # recompute this segment's memories (stay in cache)
            first = t - t % SEGMENT
            memory, segment = checkpoints[first // SEGMENT], []
            for u in range(first, t + 1):
                memory = memory - memory * zero_all[u] + torch.bmm(keys3[u].transpose(1, 2), w_write[u])
                segment.append(memory)
        memory, w_r = segment[t % SEGMENT], w_read[t]
        g_h, g_reads = g[:, :H], g[:, H:].view(B, R, W)
        d_w_r = d_read_carry + torch.bmm(g_reads, memory)
        d_sim = w_r * (d_w_r - (d_w_r * w_r).sum(-1, keepdim=True))  # softmax backward
        if strength:
            d_strength = (d_sim * cos[t]).sum(-1) * softplus_slope[t]
            d_sim = d_sim * beta[t]
        d_cos_scaled = d_sim * inv_mem_norm[t]
        d_k_hat = torch.bmm(d_cos_scaled, memory.transpose(1, 2))
        row_coef = (d_cos_scaled * cos[t]).sum(1) * row_scale[t]
        d_mem = (d_mem + memory * row_coef.unsqueeze(1) + torch.bmm(key_hat[t].transpose(1, 2), d_cos_scaled)
                 + torch.bmm(g_reads.transpose(1, 2), w_r))
        proj = (d_k_hat * key_hat_masked[t]).sum(-1, keepdim=True)
        d_keys = (d_k_hat - key_hat[t] * proj) * inv_key_norm[t]
        d_keys = d_keys + torch.bmm(w_write[t], d_mem.transpose(1, 2))
        d_ww = torch.bmm(keys3[t], d_mem)
        d_alpha = (d_ww * gate_span[t]).sum(-1)
        d_read_carry = d_ww * alpha_all[t].unsqueeze(-1)
        d_mem = d_mem - d_mem * zero_all[t]
        parts = [d_keys.reshape(B, RW) * key_slope[t], d_alpha * gate_slope[t]]
        if strength:
            parts.append(d_strength)
        d_ctrl_t = torch.cat(parts, -1)
        d_h = g_h + d_ctrl_t @ w_ctrl
        d_cell = d_cell + d_h * h_to_c[t]
        d_pre_t = torch.cat([(d_cell.unsqueeze(1) * f_ifg[t]).reshape(B, 3 * H), d_h * f_o[t]], -1)
        d_pre_steps[t], d_ctrl_steps[t] = d_pre_t, d_ctrl_t
        if t > 0:
            d_cell = d_cell * sig_f[t]
            g = grad_out[t - 1] + d_pre_t @ w_rec
    d_pre, d_ctrl = torch.stack(d_pre_steps), torch.stack(d_ctrl_steps)
    rows = T * B
    hr_prev = torch.cat([torch.zeros_like(hr_all[:1]), hr_all[:-1]], 0)
    d_w_rec = d_pre.reshape(rows, -1).t().mm(hr_prev.reshape(rows, -1))
    d_ctrl_flat = d_ctrl.reshape(rows, -1)
    d_w_ctrl = d_ctrl_flat.t().mm(hr_all[:, :, :H].reshape(rows, H))
    return d_pre, d_w_rec, d_w_ctrl, d_ctrl_flat.sum(0)


_DISABLED: list = []  # why compiling was given up in this process, once it was


def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (one line), or None when it can be tried."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) on PATH"
    return None


def _give_up(reason: str) -> None:
    """Stop compiling in this process and say why, once; callers fall back to eager code."""
    if not _DISABLED:
        _DISABLED.append(reason)
        warnings.warn(f"--compile: {reason}; the MANN recurrence runs on the eager fast path instead",
                      RuntimeWarning, stacklevel=4)


_GRAPHS: dict = {}


def _run(kind: str, fn, args: tuple, **static):
    """``fn(*args, **static)`` through its compiled graph (one per kind, shapes, dtype,
    device and options); if compiling or running the graph fails, once a warning and
    then plain eager execution of the same function."""
    if not _DISABLED:
        key = (kind, tuple((tuple(x.shape), x.dtype, x.device.type) for x in _tensors(args)),
               tuple(sorted(static.items())))
        graph = _GRAPHS.get(key)
        if graph is None:
            # cpp_wrapper: the graph's kernel calls are made from generated C++, not Python
            # (paper sizes, batch 16, one thread: sequence forward + backward at 0.89 of the
            # eager fast path's time without it, 0.77 with it; compiling takes no longer).
            options = {"cpp_wrapper": True} if args[0].device.type == "cpu" else None
            graph = _GRAPHS[key] = torch.compile(functools.partial(fn, **static), dynamic=False, fullgraph=True,
                                                 options=options)
        try:
            return graph(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager function is the same maths
            message = (str(exc).strip().splitlines() or [""])[0][:160]
            _give_up(f"torch.compile failed ({type(exc).__name__}: {message})")
    return fn(*args, **static)


def _tensors(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, tuple):
            yield from (x for x in a if isinstance(x, torch.Tensor))


class _CompiledSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_in, w_rec, w_ctrl, b_ctrl, slots, heads, decay, strength):
        args = (gates_in.contiguous(), w_rec.t(), w_ctrl.t(), b_ctrl)
        hr, saved = _run("forward", sequence_forward, args, slots=slots, heads=heads, decay=decay,
                         strength=strength, store=True)
        ctx.heads, ctx.strength, ctx.saved = heads, strength, saved
        ctx.save_for_backward(w_rec, w_ctrl, hr)
        return hr

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        w_rec, w_ctrl, hr = ctx.saved_tensors
        d_pre, d_w_rec, d_w_ctrl, d_b_ctrl = _run("backward", sequence_backward,
                                                  (grad_out.contiguous(), hr, ctx.saved, w_rec, w_ctrl),
                                                  heads=ctx.heads, strength=ctx.strength)
        return d_pre, d_w_rec, d_w_ctrl, d_b_ctrl, None, None, None, None


def compiled_lrua_sequence(gates_in: torch.Tensor, recurrent_weight: torch.Tensor, control_weight: torch.Tensor,
                           control_bias: torch.Tensor, *, memory_slots: int, num_read_heads: int,
                           usage_decay: float, key_strength: bool) -> torch.Tensor:
    """``fast.lrua_sequence`` through compiled whole-sequence graphs: same arguments, same
    result to float rounding. Where compiling is unavailable or has failed, it is
    ``fast.lrua_sequence`` itself."""
    from fewshot_mann.memory.lrua.sequence import lrua_sequence

    reason = _DISABLED[0] if _DISABLED else compile_unavailable()
    if reason is not None:
        _give_up(reason)
        return lrua_sequence(gates_in, recurrent_weight, control_weight, control_bias, memory_slots=memory_slots,
                             num_read_heads=num_read_heads, usage_decay=usage_decay, key_strength=key_strength)
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (gates_in, recurrent_weight, control_weight, control_bias))
    if needs_grad:
        return _CompiledSequence.apply(gates_in, recurrent_weight, control_weight, control_bias,
                                       memory_slots, num_read_heads, float(usage_decay), bool(key_strength))
    with torch.no_grad():
        args = (gates_in.contiguous(), recurrent_weight.t(), control_weight.t(), control_bias)
        return _run("inference", sequence_forward, args, slots=memory_slots, heads=num_read_heads,
                    decay=float(usage_decay), strength=bool(key_strength), store=False)[0]
