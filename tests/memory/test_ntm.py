"""NTM memory: against the literal per-equation reference (outputs and gradients),
gradcheck, addressing semantics, weighting invariants, per-episode reset, config
validation and a train -> evaluate -> predict round trip."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import tiny_config
from fewshot_mann.config import Config
from fewshot_mann.errors import UserError
from fewshot_mann.models.mann import MANN
from fewshot_mann.models.registry import build_model
from fewshot_mann.memory.ntm.equations import NTMMemory, address, circular_shift, shift_index
from fewshot_mann.memory.ntm.reference import literal_ntm_step
from helpers.lineage import (assert_close_lists, mann_forward_with_step, memory_step, outputs_and_grads,
                             predict_from_checkpoint, train_and_evaluate, use_synthetic_banks)


def make_memory(dtype=torch.float32, controller=7, slots=6, width=4, read_heads=3, write_heads=2, shift=1, seed=0):
    torch.manual_seed(seed)
    return NTMMemory(controller, slots, width, read_heads, write_heads, shift).to(dtype)


def random_state(mem, batch, dtype, seed=1):
    """A mid-episode state: random memory, weightings that are distributions, random reads."""
    g = torch.Generator().manual_seed(seed)
    n, w = mem.memory_slots, mem.memory_width
    memory = torch.randn(batch, n, w, generator=g, dtype=dtype)
    w_read = torch.softmax(2 * torch.randn(batch, mem.num_read_heads, n, generator=g, dtype=dtype), -1)
    w_write = torch.softmax(2 * torch.randn(batch, mem.num_write_heads, n, generator=g, dtype=dtype), -1)
    reads = torch.randn(batch, mem.read_size, generator=g, dtype=dtype)
    return [memory, w_read, w_write, reads]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shift,write_heads", [(1, 2), (1, 1), (2, 1), (0, 1)])
def test_step_matches_literal_reference(dtype, atol, shift, write_heads):
    mem = make_memory(dtype, shift=shift, write_heads=write_heads)
    h = torch.randn(3, 7, generator=torch.Generator().manual_seed(2), dtype=dtype) * 2
    params = list(mem.parameters())
    for state in (random_state(mem, 3, dtype), list(mem.initial_state(3, dtype=dtype))):
        step = lambda h, *s, fn=None: fn(mem, h, tuple(s))[1]  # noqa: E731
        fast = outputs_and_grads(lambda h, *s: step(h, *s, fn=lambda m, h, s: memory_step(m)(h, s)), [h, *state],
                                 params)
        slow = outputs_and_grads(lambda h, *s: step(h, *s, fn=literal_ntm_step), [h, *state], params)
        for i, what in enumerate(("outputs", "input grads", "parameter grads")):
            assert_close_lists(fast[i], slow[i], atol, what)


@pytest.mark.parametrize("write_heads", [1, 2])  # 1: sequence.NTMStep; 2: the autograd step
def test_mann_with_ntm_matches_literal_over_an_episode(write_heads):
    cfg = tiny_config(model="ntm", num_write_heads=write_heads)
    torch.manual_seed(0)
    model = MANN(cfg).double()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 9, 1, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.rand(2, 9, cfg.episodes.label_size, generator=g, dtype=torch.float64)
    params = list(model.parameters())
    fast = outputs_and_grads(lambda x, y: model(x, y), [images, labels], params)
    slow = outputs_and_grads(lambda x, y: mann_forward_with_step(model, literal_ntm_step, x, y), [images, labels],
                             params)
    for i, what in enumerate(("logits", "input grads", "parameter grads")):
        assert_close_lists(fast[i], slow[i], 1e-9, what)
    assert float(fast[2][0].abs().sum()) > 0


@pytest.mark.parametrize("write_heads,shift", [(2, 1), (1, 1), (1, 0)])  # one write head: sequence.NTMStep
def test_gradcheck_step_float64(write_heads, shift):
    mem = make_memory(torch.float64, controller=3, slots=4, width=2, read_heads=2, write_heads=write_heads,
                      shift=shift)
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    state = [s.requires_grad_(True) for s in random_state(mem, 2, torch.float64)[:3]]

    def step(h, memory, w_read, w_write):
        reads, new = memory_step(mem)(h, (memory, w_read, w_write, None))
        return (reads, *new[:3])

    assert torch.autograd.gradcheck(step, (h, *state), eps=1e-6, atol=1e-6)


def test_fast_step_matches_the_autograd_step_over_an_episode_at_larger_sizes():
    """sequence.NTMStep against the autograd backend, float32 to 1e-5, 12 steps of a
    (batch 4, 32 slots x 10, 3 read heads) memory, outputs and every gradient."""
    cfg = tiny_config(model="ntm")
    cfg.model.memory_slots, cfg.model.memory_width, cfg.model.num_read_heads = 32, 10, 3
    torch.manual_seed(0)
    model = MANN(cfg)
    g = torch.Generator().manual_seed(4)
    images = torch.rand(4, 12, 1, 6, 6, generator=g)
    labels = torch.rand(4, 12, cfg.episodes.label_size, generator=g)
    params = list(model.parameters())
    fast = outputs_and_grads(lambda x, y: model(x, y), [images, labels], params)
    model.memory_backend = "autograd"
    slow = outputs_and_grads(lambda x, y: model(x, y), [images, labels], params)
    for i, what in enumerate(("logits", "input grads", "parameter grads")):
        assert_close_lists(fast[i], slow[i], 1e-5, what)
    assert all(float(p.abs().sum()) > 0 for p in fast[2])


def test_circular_shift_equals_the_index_gather():
    g = torch.Generator().manual_seed(0)
    for n, s in ((7, 1), (7, 3), (5, 2), (4, 0)):
        gated = torch.rand(2, 3, n, generator=g, dtype=torch.float64)
        shift = torch.softmax(torch.randn(2, 3, 2 * s + 1, generator=g, dtype=torch.float64), -1)
        expected = (shift.unsqueeze(-1) * gated[..., shift_index(n, s)]).sum(dim=-2)
        assert torch.allclose(circular_shift(gated, shift), expected, atol=1e-12)


def test_shift_moves_the_focus_by_one_slot():
    """Gate 0 (keep the previous weighting), shift weights on +1, strong sharpening:
    a focus on slot i moves to slot i+1 (mod N), as eq. 8 says."""
    n, w, s = 5, 3, 1
    memory = torch.randn(1, n, w)
    w_prev = torch.zeros(1, 1, n)
    w_prev[..., n - 1] = 1.0
    params = torch.zeros(1, 1, w + 3 + 2 * s + 1)
    params[..., w + 1] = -50.0  # g = sigmoid(-50) ~ 0
    params[..., w + 2:w + 2 + 3] = torch.tensor([-50.0, -50.0, 50.0])  # shifts -1, 0, +1
    params[..., -1] = 5.0  # gamma ~ 6
    out = address(params, memory, w_prev, w)
    assert int(out.argmax()) == 0 and float(out[0, 0, 0]) > 0.999  # wrapped around
    params[..., w + 2:w + 2 + 3] = torch.tensor([50.0, -50.0, -50.0])
    assert int(address(params, memory, w_prev, w).argmax()) == n - 2


def test_strong_key_strength_focuses_on_the_matching_row():
    n, w = 6, 4
    memory = torch.randn(1, n, w)
    params = torch.zeros(1, 1, w + 3 + 3)
    params[..., :w] = memory[0, 3]
    params[..., w] = 200.0  # beta ~ 200
    params[..., w + 1] = 50.0  # g ~ 1: content only
    params[..., w + 3] = 50.0  # shift 0
    out = address(params, memory, torch.full((1, 1, n), 1.0 / n), w)
    assert int(out.argmax()) == 3 and float(out[0, 0, 3]) > 0.99


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]),
       write_heads=st.integers(1, 3), shift=st.integers(0, 2))
def test_every_weighting_is_a_distribution(seed, scale, write_heads, shift):
    mem = make_memory(torch.float32, controller=5, slots=6, width=3, read_heads=2, write_heads=write_heads,
                      shift=shift, seed=seed)
    g = torch.Generator().manual_seed(seed)
    state = mem.initial_state(4)
    for _ in range(6):
        reads, state = memory_step(mem)(torch.randn(4, 5, generator=g) * scale, state)
        for weights in state[1:3]:
            assert torch.isfinite(weights).all() and (weights >= 0).all()
            assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
        assert torch.isfinite(state[0]).all() and torch.isfinite(reads).all()


def test_memory_is_reset_every_episode_and_batch_elements_are_independent():
    cfg = tiny_config(model="ntm")
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 8, 1, 6, 6, generator=g)
    labels = torch.rand(3, 8, cfg.episodes.label_size, generator=g)
    first = model(images, labels)
    assert torch.equal(model(images, labels), first)  # nothing carried over from the last call
    other = images.clone()
    other[1:] = torch.rand(2, 8, 1, 6, 6, generator=g)
    assert torch.allclose(model(other, labels)[0], first[0], atol=1e-6)
    assert torch.allclose(model(images[:1], labels[:1])[0], first[0], atol=1e-6)


@pytest.mark.parametrize("changes,needle", [
    ({"shift_range": 4, "memory_slots": 8}, "--shift-range 4 spans 9 slots, more than --memory-slots 8"),
    ({"shift_range": -1}, "--shift-range must be >= 0"),
    ({"num_write_heads": 0}, "--write-heads must be at least 1"),
    ({"memory_slots": 0}, "--memory-slots must be at least 1"),
    ({"num_read_heads": -2}, "--read-heads must be at least 1"),
    ({"model": "turing"}, "--model must be one of mann, ntm, dnc, lstm, ff, transformer"),
])
def test_invalid_settings_are_one_clear_line(changes, needle):
    cfg = Config()
    cfg.model.model = "ntm"
    for k, v in changes.items():
        setattr(cfg.model, k, v)
    with pytest.raises(UserError) as err:
        cfg.validate()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_train_then_evaluate_and_predict_round_trip(tmp_path, monkeypatch):
    use_synthetic_banks(monkeypatch)
    result = train_and_evaluate("ntm", tmp_path, extra=["--write-heads", "2", "--shift-range", "2"])
    assert result["config"]["model"]["num_write_heads"] == 2 and result["config"]["model"]["shift_range"] == 2
    predict_from_checkpoint(tmp_path / "ntm" / "checkpoint.pt", tmp_path)


def test_checkpoint_layout_is_unchanged_at_the_paper_sizes():
    """The fast step added no parameter or persistent buffer: a checkpoint written before
    it (same names and shapes) loads, and runs in progress resume."""
    cfg = Config()
    cfg.model.model = "ntm"
    shapes = {k: tuple(v.shape) for k, v in MANN(cfg).state_dict().items()}
    assert shapes == {
        "memory.read_params.weight": (184, 200), "memory.read_params.bias": (184,),
        "memory.write_params.weight": (126, 200), "memory.write_params.bias": (126,),
        "input_proj.weight": (800, 405), "input_proj.bias": (800,), "recurrent.weight": (800, 360),
        "output.weight": (5, 360), "output.bias": (5,),
    }
