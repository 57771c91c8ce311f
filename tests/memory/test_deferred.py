"""deferred.DeferredWeight: a weight used at every step of a loop, its gradient one matmul
over all steps; the same gradients as F.linear at every step."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from fewshot_mann.memory.deferred import DeferredWeight


def _loop(weight, x0, steps, linear):
    """A small recurrence h_{t+1} = tanh(x_t + h_t W^T): every step uses the weight."""
    h, outs = torch.zeros_like(x0[0]), []
    for t in range(steps):
        h = torch.tanh(x0[t] + linear(h))
        outs.append(h)
    return torch.stack(outs)


def test_gradients_equal_a_linear_at_every_step():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    plain = torch.autograd.grad((_loop(weight, x, 7, lambda h: F.linear(h, weight)) * proj).sum(), [weight, x])
    deferred = DeferredWeight(weight)
    out = _loop(weight, x, 7, deferred.linear)
    assert torch.equal(out, _loop(weight, x, 7, lambda h: F.linear(h, weight)))
    loss = (out * proj).sum()
    first = torch.autograd.grad(loss, [weight, x], retain_graph=True)
    second = torch.autograd.grad(loss, [weight, x])  # a second backward collects afresh
    for got in (first, second):
        for a, b in zip(got, plain):
            assert torch.allclose(a, b, atol=1e-12)
    assert float(plain[0].abs().sum()) > 0


def test_backward_accumulates_into_grad_and_gradcheck():
    weight = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, x: _loop(w, x, 3, DeferredWeight(w).linear), (weight, x))
    _loop(weight, x, 3, DeferredWeight(weight).linear).sum().backward()
    expected = torch.autograd.grad(_loop(weight, x, 3, lambda h: F.linear(h, weight)).sum(), weight)[0]
    assert torch.allclose(weight.grad, expected, atol=1e-12)


def test_without_gradients_it_is_a_plain_linear():
    weight = torch.randn(4, 4)
    x = torch.randn(2, 4)
    assert torch.equal(DeferredWeight(weight).linear(x), F.linear(x, weight))
    with torch.no_grad():
        w = weight.clone().requires_grad_(True)
        out = DeferredWeight(w).linear(x)
        assert not out.requires_grad and torch.equal(out, F.linear(x, weight))
