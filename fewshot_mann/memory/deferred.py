"""A weight applied once per time step whose gradient is one matmul over all steps.

In a step-by-step autograd loop, ``F.linear(x_t, W)`` at every step t makes backward
compute ``g_t^T x_t`` (an (out, in) matrix) at every step and add it into ``W.grad``:
T small matmuls with a K of only the batch size, each writing a whole weight-sized
matrix, then T weight-sized additions. At the paper's sizes (the controller's recurrent
weight, 800 x 360, batch 16, 50 steps) that was a fifth of the NTM and DNC training
step. ``DeferredWeight`` computes the same sum as one matmul over (T * batch) rows:

    dW = sum_t g_t^T x_t = [g_1; ...; g_T]^T [x_1; ...; x_T]

How: ``DeferredWeight(weight)`` makes a 0-dim *token* whose autograd node has ``weight``
as its input; ``linear(x)`` returns ``x W^T`` through a Function that takes the token
(and a detached ``W``), so its backward returns only ``g W`` for ``x``, a zero for the
token, and keeps ``(g, x)`` in a list. The token's node runs after every step that used
it (autograd runs a node once all gradients into it are in), and turns the list into
``dW``. The same number (up to float summation order) reaches ``weight.grad``.

Without gradients (no grad mode, or a weight that does not require one) ``linear`` is
plain ``F.linear``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


class _Token(torch.autograd.Function):
    """weight -> 0-dim zero; backward: the weight gradient from the collected (g, x) pairs."""

    @staticmethod
    def forward(ctx, weight, pairs):
        ctx.pairs = pairs
        ctx.weight_shape = weight.shape
        return weight.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, _grad_token):
        pairs = ctx.pairs
        if not pairs:
            return None, None
        grads = torch.cat([g for g, _ in pairs])
        inputs = torch.cat([x for _, x in pairs])
        pairs.clear()  # a second backward (retain_graph) collects afresh
        return grads.t().mm(inputs), None


class _Linear(torch.autograd.Function):
    """(x (rows, in), token, W detached (out, in)) -> x W^T; backward: g W for x, the pair kept."""

    @staticmethod
    def forward(ctx, x, token, weight, pairs):
        ctx.save_for_backward(x, weight)
        ctx.pairs = pairs
        return x.mm(weight.t())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ctx.pairs.append((grad, x))
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        return grad_x, grad.new_zeros(()), None, None


class DeferredWeight:
    """``weight`` (out, in) used by ``linear(x)`` at many steps of one forward pass; make
    one per forward pass (it holds that pass's pairs)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self._pairs: list = []
        self._token = _Token.apply(weight, self._pairs) if torch.is_grad_enabled() and weight.requires_grad else None
        self._detached = weight.detach()

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in) -> x W^T (rows, out)."""
        if self._token is None:
            return F.linear(x, self.weight)
        return _Linear.apply(x, self._token, self._detached, self._pairs)
