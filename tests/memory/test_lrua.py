"""LRUA memory against the slow literal reference, and the known re-implementation bugs.

Public re-implementations got LRUA wrong in known ways. Each mutant below reproduces
one; the reference comparison must catch every one of them while the real memory
matches the reference to 1e-5.
"""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from fewshot_mann.memory.lrua.equations import COSINE_EPS, LRUAMemory, least_used
from fewshot_mann.models.mann import MANN, lstm_cell
from fewshot_mann.memory.lrua.reference import reference_forward


def make_model(key_strength=False, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config(key_strength=key_strength)
    return MANN(cfg).double(), cfg


def random_inputs(cfg, batch=3, steps=14, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = cfg.data.image_size
    images = torch.rand(batch, steps, 1, s, s, generator=g, dtype=torch.float64)
    labels = torch.rand(batch, steps, cfg.episodes.label_size, generator=g, dtype=torch.float64)
    return images, labels


def module_forward(model, images, label_inputs, feed_back=True):
    """MANN's recurrence written against the memory interface (used to run mutants)."""
    batch = images.shape[0]
    gates_in = model.input_proj(torch.cat([model.encoder(images), label_inputs], -1))
    h = gates_in.new_zeros(batch, model.hidden)
    c = gates_in.new_zeros(batch, model.hidden)
    state = model.memory.initial_state(batch, dtype=gates_in.dtype)
    reads, outs = state[-1], []
    for g_t in gates_in.unbind(1):
        fed = reads if feed_back else torch.zeros_like(reads)
        h, c = lstm_cell(g_t + model.recurrent(torch.cat([h, fed], -1)), c)
        reads, state = model.memory.step(h, state)
        outs.append(torch.cat([h, reads], -1))
    return model.output(torch.stack(outs, 1))


class MutantLRUA(LRUAMemory):
    """LRUA with one known bug switched on.

    - most_used: the write goes to the most-used slots.
    - no_zeroing: the least-used slot is never cleared before the write.
    - double_softmax: the read weights pass through a second softmax.
    - never_written: memory never changes.
    - lu_from_current_usage: the least-used slots (and the slot zeroed) are picked from this
      step's usage w_u(t) (the step's accesses counted) instead of w_u(t-1): the step is run
      once to get w_u(t), then again with the least-used slots of that usage.
    - zero_after_write: the least-used slot is zeroed after the write, not before (wiping
      what was just written there).
    - write_with_current_reads: eq. 7 uses w_r(t) (the current key read against the memory
      before this write) instead of w_r(t-1).
    - usage_without_writes: eq. 5 without w_w: usage counts reads only.
    """

    bug = None

    def _read(self, keys, memory):
        k_hat = keys / keys.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        m_hat = memory / memory.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        w_read = torch.softmax(torch.bmm(k_hat, m_hat.transpose(1, 2)), -1)
        if self.bug == "double_softmax":
            w_read = torch.softmax(w_read, -1)
        return w_read

    def _access(self, memory, keys, alpha, w_read_prev, w_lu_prev, zero_prev):
        """(memory after the write, read weights, write weights) of one step."""
        if self.bug == "write_with_current_reads":
            w_read_prev = self._read(keys, memory * (1 - zero_prev).unsqueeze(-1))
        w_write = alpha * w_read_prev + (1 - alpha) * w_lu_prev.unsqueeze(1)
        if self.bug not in ("no_zeroing", "zero_after_write"):
            memory = memory * (1 - zero_prev).unsqueeze(-1)
        if self.bug != "never_written":
            memory = memory + torch.bmm(w_write.transpose(1, 2), keys)
        if self.bug == "zero_after_write":
            memory = memory * (1 - zero_prev).unsqueeze(-1)
        return memory, self._read(keys, memory), w_write

    def _usage(self, usage, w_read, w_write):
        with torch.no_grad():
            if self.bug == "usage_without_writes":
                return self.usage_decay * usage + w_read.sum(1)
            return self.usage_decay * usage + w_read.sum(1) + w_write.sum(1)

    def step(self, h, state):
        memory_prev, w_read_prev, usage, w_lu_prev, zero_prev, _ = state
        b, r, w = h.shape[0], self.num_read_heads, self.memory_width
        keys = torch.tanh(self.key(h)).view(b, r, w)
        alpha = torch.sigmoid(self.gate(h)).unsqueeze(-1)
        memory, w_read, w_write = self._access(memory_prev, keys, alpha, w_read_prev, w_lu_prev, zero_prev)
        if self.bug == "lu_from_current_usage":
            with torch.no_grad():
                w_lu_now, zero_now = least_used(self._usage(usage, w_read, w_write), r)
            memory, w_read, w_write = self._access(memory_prev, keys, alpha, w_read_prev, w_lu_now, zero_now)
        reads = torch.bmm(w_read, memory).reshape(b, r * w)
        usage = self._usage(usage, w_read, w_write)
        with torch.no_grad():
            if self.bug == "most_used":
                w_lu, zero = least_used(-usage, r)
            else:
                w_lu, zero = least_used(usage, r)
        return reads, (memory, w_read, usage, w_lu, zero, reads)


def mutant_of(model, bug):
    m = model.memory
    mutant = MutantLRUA(m.controller_size, m.memory_slots, m.memory_width, m.num_read_heads, m.usage_decay).double()
    mutant.load_state_dict(m.state_dict())
    mutant.bug = bug
    model.memory = mutant
    return model


@pytest.mark.parametrize("key_strength", [False, True])
def test_model_matches_literal_reference(key_strength):
    model, cfg = make_model(key_strength)
    images, labels = random_inputs(cfg)
    fast, ref = model(images, labels), reference_forward(model, images, labels)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    params = list(model.parameters())
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name


def test_module_path_matches_reference_in_float32():
    model, cfg = make_model()
    model = model.float()
    images, labels = (t.float() for t in random_inputs(cfg))
    assert torch.allclose(module_forward(model, images, labels), reference_forward(model, images, labels), atol=1e-5)


BUGS = ["most_used", "no_zeroing", "double_softmax", "never_written", "lu_from_current_usage", "zero_after_write",
        "write_with_current_reads", "usage_without_writes"]


@pytest.mark.parametrize("bug", BUGS)
def test_reference_catches_memory_bug(bug):
    model, cfg = make_model()
    images, labels = random_inputs(cfg)
    ref = reference_forward(model, images, labels)
    correct = mutant_of(model, None)
    assert torch.allclose(module_forward(correct, images, labels), ref, atol=1e-5)
    buggy = mutant_of(model, bug)
    assert (module_forward(buggy, images, labels) - ref).abs().max() > 1e-4, f"{bug} went unnoticed"


def test_reference_catches_reads_not_fed_back():
    model, cfg = make_model()
    images, labels = random_inputs(cfg)
    ref = reference_forward(model, images, labels)
    assert (module_forward(model, images, labels, feed_back=False) - ref).abs().max() > 1e-4


def test_least_used_picks_smallest_with_ties_to_lower_index():
    usage = torch.tensor([[0.5, 0.1, 0.1, 0.9, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    w_lu, zero = least_used(usage, 2)
    assert w_lu.tolist() == [[0, 1, 0, 0, 1], [1, 1, 0, 0, 0]]
    assert zero.tolist() == [[0, 0, 0, 0, 1], [1, 0, 0, 0, 0]]


def test_write_goes_to_zeroed_least_used_slot_and_memory_changes():
    torch.manual_seed(0)
    mem = LRUAMemory(8, memory_slots=6, memory_width=4, num_read_heads=2).double()
    state = mem.initial_state(1, dtype=torch.float64)
    h = torch.randn(1, 8, dtype=torch.float64)
    _, state = mem.step(h, state)
    memory = state[0][0]
    # Step 1: w_lu = slots {0, 1} (all usage tied at 0), read weights zero: only they change.
    assert (memory[2:] == 1e-6).all()
    assert (memory[:2] != 1e-6).all()
    usage = state[2][0]
    assert torch.all(usage > 0)
    # Reads are convex combinations: each head's weights sum to 1.
    assert torch.allclose(state[1].sum(-1), torch.ones(1, 2, dtype=torch.float64))


def test_memory_is_fresh_for_every_episode():
    """A sequence's outputs never depend on other sequences in the batch or earlier calls."""
    model, cfg = make_model()
    images, labels = random_inputs(cfg, batch=4)
    together = model(images, labels)
    alone = model(images[2:3], labels[2:3])
    model(images.flip(0), labels.flip(0))  # another call in between changes nothing
    again = model(images[2:3], labels[2:3])
    assert torch.allclose(together[2:3], alone, atol=1e-10)
    assert torch.equal(alone, again)
