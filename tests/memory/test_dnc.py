"""DNC memory: the fast step (dnc/sequence.DNCStep, memory backend sequence) and the autograd
step (backend autograd) against the literal per-equation reference (outputs and gradients) and each other,
gradcheck, allocation and temporal-link semantics, invariants of usage, allocation,
write weighting and link matrix, per-episode reset, validation, train -> evaluate -> predict."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import tiny_config
from fewshot_mann.config import Config
from fewshot_mann.memory.dnc.equations import DNCMemory, allocation, interface_size
from fewshot_mann.memory.dnc.sequence import cumprod_backward
from fewshot_mann.errors import UserError
from fewshot_mann.models.mann import MANN
from fewshot_mann.models.registry import build_model
from fewshot_mann.memory.dnc.reference import literal_dnc_step
from helpers.lineage import (assert_close_lists, mann_forward_with_step, memory_step, outputs_and_grads,
                             predict_from_checkpoint, train_and_evaluate, use_synthetic_banks)


def make_memory(dtype=torch.float32, controller=7, slots=6, width=4, read_heads=3, seed=0, fast=True):
    """A DNC memory whose ``run_step(h, state)`` is the fast (sequence) or the autograd step."""
    torch.manual_seed(seed)
    mem = DNCMemory(controller, slots, width, read_heads).to(dtype)
    mem.run_step = memory_step(mem, "sequence" if fast else "autograd")
    return mem


def random_state(mem, batch, dtype, seed=1):
    """A mid-episode state that satisfies the DNC's constraints, with distinct usages."""
    g = torch.Generator().manual_seed(seed)
    n, r = mem.memory_slots, mem.num_read_heads
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype)  # noqa: E731
    memory = torch.randn(batch, n, mem.memory_width, generator=g, dtype=dtype)
    usage = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)]).to(dtype) / n + 0.5 / n * rand(batch, 1)
    links = rand(batch, n, n) * (1 - torch.eye(n, dtype=dtype))
    links = links / (1.2 * links.sum(-1, keepdim=True))
    precedence = 0.8 * torch.softmax(rand(batch, n) * 3, -1)
    w_read = torch.softmax(3 * rand(batch, r, n), -1)
    w_write = 0.9 * torch.softmax(3 * rand(batch, n), -1)
    reads = torch.randn(batch, mem.read_size, generator=g, dtype=dtype)
    return [memory, usage, links, precedence, w_read, w_write, reads]


@pytest.mark.parametrize("fast", [True, False])  # dnc/sequence.DNCStep; the autograd step
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_step_matches_literal_reference(dtype, atol, fast):
    mem = make_memory(dtype, fast=fast)
    h = torch.randn(3, 7, generator=torch.Generator().manual_seed(2), dtype=dtype) * 2
    params = list(mem.parameters())
    for state in (random_state(mem, 3, dtype), list(mem.initial_state(3, dtype=dtype))):
        fast = outputs_and_grads(lambda h, *s: mem.run_step(h, tuple(s))[1], [h, *state], params)
        slow = outputs_and_grads(lambda h, *s: literal_dnc_step(mem, h, tuple(s))[1], [h, *state], params)
        for i, what in enumerate(("outputs", "input grads", "parameter grads")):
            assert_close_lists(fast[i], slow[i], atol, what)
        assert float(fast[2][0].abs().sum()) > 0


def test_mann_with_dnc_matches_literal_over_an_episode():
    cfg = tiny_config(model="dnc")
    torch.manual_seed(0)
    model = MANN(cfg).double()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 9, 1, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.rand(2, 9, cfg.episodes.label_size, generator=g, dtype=torch.float64)
    params = list(model.parameters())
    fast = outputs_and_grads(lambda x, y: model(x, y), [images, labels], params)
    slow = outputs_and_grads(lambda x, y: mann_forward_with_step(model, literal_dnc_step, x, y), [images, labels],
                             params)
    for i, what in enumerate(("logits", "input grads", "parameter grads")):
        assert_close_lists(fast[i], slow[i], 1e-9, what)


@pytest.mark.parametrize("fast", [True, False])
def test_gradcheck_step_float64(fast):
    mem = make_memory(torch.float64, controller=3, slots=4, width=2, read_heads=2, fast=fast)
    state = random_state(mem, 2, torch.float64)
    inputs = [torch.randn(2, 3, dtype=torch.float64)] + state[:6]
    inputs = [x.requires_grad_(True) for x in inputs]

    def step(h, *s):
        return mem.run_step(h, (*s, None))[1]  # the whole new state, reads included

    assert torch.autograd.gradcheck(step, tuple(inputs), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_fast_step_matches_the_autograd_step_over_an_episode_at_larger_sizes(dtype, atol):
    """dnc/sequence.DNCStep against the autograd backend, 12 steps of a (batch 4, 32 slots x 10,
    3 read heads) memory from the fresh (all-zero usage) state, outputs and every gradient."""
    cfg = tiny_config(model="dnc")
    cfg.model.memory_slots, cfg.model.memory_width, cfg.model.num_read_heads = 32, 10, 3
    torch.manual_seed(0)
    model = MANN(cfg).to(dtype)
    g = torch.Generator().manual_seed(4)
    images = torch.rand(4, 12, 1, 6, 6, generator=g, dtype=dtype)
    labels = torch.rand(4, 12, cfg.episodes.label_size, generator=g, dtype=dtype)
    params = list(model.parameters())
    fast = outputs_and_grads(lambda x, y: model(x, y), [images, labels], params)
    model.memory_backend = "autograd"
    slow = outputs_and_grads(lambda x, y: model(x, y), [images, labels], params)
    for i, what in enumerate(("logits", "input grads", "parameter grads")):
        assert_close_lists(fast[i], slow[i], atol, what)
    assert all(float(p.abs().sum()) > 0 for p in fast[2])


@pytest.mark.parametrize("row", [[0.3, 0.7, 0.9, 0.5, 0.2], [1.0, 0.0, 0.0, 0.4, 0.0], [1.0, 0.6, 0.0, 0.8, 0.5],
                                 [0.0, 0.5, 0.0, 0.2, 0.3], [1.0, 0.2, 0.3, 0.4, 0.0]])
def testcumprod_backward_matches_autograd_with_and_without_zeros(row):
    """The allocation's cumulative product gradient, exact at a row's first zero and 0 after it."""
    x = torch.tensor([row, [0.3, 0.7, 0.9, 0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = torch.cumprod(x, -1)
    expected, = torch.autograd.grad(out, x, grad)
    assert torch.allclose(cumprod_backward(grad, x.detach(), out.detach()), expected, rtol=0, atol=1e-12)


def test_allocation_known_values_and_ties():
    usage = torch.tensor([[0.5, 0.1, 0.9]], dtype=torch.float64)
    # free list phi = (1, 0, 2): a[1] = 0.9, a[0] = 0.5 * 0.1, a[2] = 0.1 * (0.1 * 0.5)
    expected = torch.tensor([[0.05, 0.9, 0.005]], dtype=torch.float64)
    assert torch.allclose(allocation(usage), expected)
    # a fresh memory allocates the lowest slot; a full one allocates nothing
    assert torch.equal(allocation(torch.zeros(1, 4)), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(allocation(torch.ones(1, 4)), torch.zeros(1, 4))
    # the sort is a constant; the gradient flows through the product
    u = usage.clone().requires_grad_(True)
    allocation(u)[0, 2].backward()  # = (1 - u2) u1 u0
    assert torch.allclose(u.grad, torch.tensor([[0.1 * 0.1, 0.5 * 0.1, -0.5 * 0.1]], dtype=torch.float64))


def gate_bias(mem, **fields):
    """A bias for the interface layer (weights zeroed) that sets chosen fields' raw values."""
    r, w = mem.num_read_heads, mem.memory_width
    sizes = dict(read_keys=r * w, read_strengths=r, write_key=w, write_strength=1, erase=w, write_vector=w,
                 free_gates=r, allocation_gate=1, write_gate=1, read_modes=3 * r)
    bias, pos = torch.zeros(interface_size(w, r)), 0
    for name, size in sizes.items():
        if name in fields:
            bias[pos:pos + size] = torch.as_tensor(fields[name], dtype=torch.float32).expand(size)
        pos += size
    return bias


@torch.no_grad()
def test_allocating_writes_fill_fresh_slots_in_order_and_forward_links_follow_them():
    mem = make_memory(controller=2, slots=5, width=3, read_heads=1)
    mem.interface.weight.zero_()
    mem.interface.bias.copy_(gate_bias(mem, write_gate=50.0, allocation_gate=50.0, free_gates=-50.0,
                                       erase=50.0, write_vector=1.0, read_modes=[-50.0, -50.0, 50.0]))
    state = mem.initial_state(1)
    written = []
    for _ in range(3):
        _, state = memory_step(mem)(torch.zeros(1, 2), state)
        written.append(int(state[5].argmax()))
        assert float(state[5].max()) > 0.99
    assert written == [0, 1, 2]
    links = state[2][0]
    assert float(links[1, 0]) > 0.98 and float(links[2, 1]) > 0.98  # slot 1 was written after slot 0, ...
    # a forward read from slot 0 moves to slot 1
    w_read = torch.zeros(1, 1, 5)
    w_read[..., 0] = 1.0
    state = (*state[:4], w_read, *state[5:])
    mem.interface.bias.copy_(gate_bias(mem, write_gate=-50.0, free_gates=-50.0, read_modes=[-50.0, -50.0, 50.0]))
    _, state = memory_step(mem)(torch.zeros(1, 2), state)
    assert int(state[4].argmax()) == 1 and float(state[4].max()) > 0.97


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]), read_heads=st.integers(1, 3))
def test_usage_allocation_write_and_link_invariants(seed, scale, read_heads):
    mem = make_memory(controller=5, slots=6, width=3, read_heads=read_heads, seed=seed)
    g = torch.Generator().manual_seed(seed)
    state = mem.initial_state(4)
    eye = torch.eye(6, dtype=torch.bool)
    tol = 1e-5  # float32 rounding: a write weighting may sum to 1 + 1e-7
    for _ in range(8):
        reads, state = memory_step(mem)(torch.randn(4, 5, generator=g) * scale, state)
        memory, usage, links, precedence, w_read, w_write, _ = state
        for t in state:
            assert torch.isfinite(t).all()
        assert (usage >= -tol).all() and (usage <= 1 + tol).all()
        alloc = allocation(usage)
        assert (alloc >= -tol).all() and (alloc.sum(-1) <= 1 + tol).all()
        assert (w_write >= -tol).all() and (w_write.sum(-1) <= 1 + tol).all()
        assert (precedence >= -tol).all() and (precedence.sum(-1) <= 1 + tol).all()
        assert (links[:, eye] == 0).all()
        assert (links >= -tol).all() and (links.sum(-1) <= 1 + tol).all() and (links.sum(-2) <= 1 + tol).all()
        assert (w_read >= -tol).all() and (w_read.sum(-1) <= 1 + tol).all()


def test_memory_is_reset_every_episode_and_batch_elements_are_independent():
    cfg = tiny_config(model="dnc")
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 8, 1, 6, 6, generator=g)
    labels = torch.rand(3, 8, cfg.episodes.label_size, generator=g)
    first = model(images, labels)
    assert torch.equal(model(images, labels), first)
    other = images.clone()
    other[1:] = torch.rand(2, 8, 1, 6, 6, generator=g)
    assert torch.allclose(model(other, labels)[0], first[0], atol=1e-6)
    assert torch.allclose(model(images[:1], labels[:1])[0], first[0], atol=1e-6)


@pytest.mark.parametrize("changes,needle", [
    ({"num_write_heads": 2}, "--model dnc has exactly one write head"),
    ({"memory_slots": 0}, "--memory-slots must be at least 1"),
    ({"num_read_heads": -1}, "--read-heads must be at least 1"),
    ({"memory_width": 0}, "--memory-width must be at least 1"),
])
def test_invalid_settings_are_one_clear_line(changes, needle):
    cfg = Config()
    cfg.model.model = "dnc"
    for k, v in changes.items():
        setattr(cfg.model, k, v)
    with pytest.raises(UserError) as err:
        cfg.validate()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_train_then_evaluate_and_predict_round_trip(tmp_path, monkeypatch):
    use_synthetic_banks(monkeypatch)
    train_and_evaluate("dnc", tmp_path)
    predict_from_checkpoint(tmp_path / "dnc" / "checkpoint.pt", tmp_path)


def test_checkpoint_layout_is_unchanged_at_the_paper_sizes():
    """Same names and shapes as before the hand-written link backward: old checkpoints load."""
    cfg = Config()
    cfg.model.model = "dnc"
    shapes = {k: tuple(v.shape) for k, v in MANN(cfg).state_dict().items()}
    assert shapes == {
        "memory.interface.weight": (303, 200), "memory.interface.bias": (303,),
        "input_proj.weight": (800, 405), "input_proj.bias": (800,), "recurrent.weight": (800, 360),
        "output.weight": (5, 360), "output.bias": (5,),
    }
