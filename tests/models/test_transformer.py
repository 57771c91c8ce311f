"""The causal transformer baseline: against a literal per-head, per-position attention
loop (outputs and gradients), gradcheck, causality (no step sees a later step or its own
label), per-episode independence, validation and a train -> evaluate -> predict round trip."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_config
from fewshot_mann.config import Config
from fewshot_mann.errors import UserError
from fewshot_mann.models.registry import build_model
from helpers.lineage import (assert_close_lists, outputs_and_grads, predict_from_checkpoint, train_and_evaluate,
                             use_synthetic_banks)


def small_transformer(dtype=torch.float64, layers=2, heads=3, width=12, max_steps=16, seed=0):
    cfg = tiny_config(model="transformer", transformer_layers=layers, transformer_heads=heads,
                      transformer_width=width, transformer_max_steps=max_steps)
    torch.manual_seed(seed)
    return build_model(cfg).to(dtype), cfg


def literal_forward(model, images, label_inputs):
    """The transformer written out: every head and every query position separately,
    attention as an explicit softmax over the keys at positions 0..t."""
    steps = images.shape[1]
    x = F.linear(torch.cat([model.encoder(images), label_inputs], -1), model.embed.weight, model.embed.bias)
    x = x + torch.stack([model.position.weight[t] for t in range(steps)])
    for block in model.blocks:
        attn = block.attn
        y = block.ln1(x)
        width = y.shape[-1]
        dh = width // attn.heads
        qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias)
        q, k, v = qkv[..., :width], qkv[..., width:2 * width], qkv[..., 2 * width:]
        heads_out = []
        for head in range(attn.heads):
            cols = slice(head * dh, (head + 1) * dh)
            rows = []
            for t in range(steps):
                scores = [(q[:, t, cols] * k[:, s, cols]).sum(-1) / math.sqrt(dh) for s in range(t + 1)]
                weights = torch.softmax(torch.stack(scores, -1), -1)
                rows.append(sum(weights[:, s:s + 1] * v[:, s, cols] for s in range(t + 1)))
            heads_out.append(torch.stack(rows, 1))
        x = x + F.linear(torch.cat(heads_out, -1), attn.proj.weight, attn.proj.bias)
        x = x + block.mlp(block.ln2(x))
    return model.output(model.ln_final(x))


def random_inputs(cfg, batch=2, steps=7, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = cfg.data.image_size
    return (torch.rand(batch, steps, 1, s, s, generator=g, dtype=dtype),
            torch.rand(batch, steps, cfg.episodes.label_size, generator=g, dtype=dtype))


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_forward_matches_literal_attention(dtype, atol):
    model, cfg = small_transformer(dtype)
    images, labels = random_inputs(cfg, dtype=dtype)
    params = list(model.parameters())
    fast = outputs_and_grads(lambda x, y: model(x, y), [images, labels], params)
    slow = outputs_and_grads(lambda x, y: literal_forward(model, x, y), [images, labels], params)
    for i, what in enumerate(("logits", "input grads", "parameter grads")):
        assert_close_lists(fast[i], slow[i], atol, what)
    assert all(float(g.abs().sum()) > 0 for g in fast[2])


def test_gradcheck_float64():
    model, cfg = small_transformer(layers=1, heads=2, width=4)
    images, labels = random_inputs(cfg, batch=1, steps=4)
    images.requires_grad_(True)
    labels.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: model(x, y), (images, labels), eps=1e-6, atol=1e-6)


def test_no_step_sees_later_steps_or_its_own_label():
    model, cfg = small_transformer(torch.float32)
    images, labels = random_inputs(cfg, steps=10, dtype=torch.float32)
    base = model(images, labels)
    t = 4
    later_images, later_labels = images.clone(), labels.clone()
    later_images[:, t + 1:] = torch.rand_like(later_images[:, t + 1:])
    later_labels[:, t + 1:] = torch.rand_like(later_labels[:, t + 1:])  # includes step t's own label
    changed = model(later_images, later_labels)
    assert torch.allclose(changed[:, :t + 1], base[:, :t + 1], atol=1e-6)
    assert not torch.allclose(changed[:, t + 1:], base[:, t + 1:], atol=1e-3)


def test_each_episode_is_independent_and_calls_carry_nothing_over():
    model, cfg = small_transformer(torch.float32)
    images, labels = random_inputs(cfg, batch=3, dtype=torch.float32)
    first = model(images, labels)
    assert torch.equal(model(images, labels), first)
    other = images.clone()
    other[1:] = torch.rand_like(other[1:])
    assert torch.allclose(model(other, labels)[0], first[0], atol=1e-6)
    assert torch.allclose(model(images[:1], labels[:1])[0], first[0], atol=1e-6)


def test_episode_longer_than_learned_positions_is_a_clear_error():
    model, cfg = small_transformer(torch.float32, max_steps=5)
    images, labels = random_inputs(cfg, steps=6, dtype=torch.float32)
    with pytest.raises(UserError, match="longer than the transformer's --transformer-max-steps 5"):
        model(images, labels)


@pytest.mark.parametrize("changes,needle", [
    ({"transformer_max_steps": 49}, "--transformer-max-steps 49 is shorter than an episode"),
    ({"transformer_heads": 0}, "--transformer-heads must be at least 1"),
    ({"transformer_layers": 0}, "--transformer-layers must be at least 1"),
    ({"transformer_width": 130, "transformer_heads": 4}, "--transformer-width must be a positive multiple"),
])
def test_invalid_settings_are_one_clear_line(changes, needle):
    cfg = Config()
    cfg.model.model = "transformer"
    for k, v in changes.items():
        setattr(cfg.model, k, v)
    with pytest.raises(UserError) as err:
        cfg.validate()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_train_then_evaluate_and_predict_round_trip(tmp_path, monkeypatch):
    use_synthetic_banks(monkeypatch)
    result = train_and_evaluate("transformer", tmp_path, extra=["--transformer-max-steps", "12"])
    assert result["config"]["model"]["transformer_width"] == 16
    predict_from_checkpoint(tmp_path / "transformer" / "checkpoint.pt", tmp_path)
