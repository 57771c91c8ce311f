"""Comparing the LRUA MANN's paths (memory/test_fast.py, test_cpp.py, test_backends.py): one model,
one batch of episodes, logits and the gradient of every parameter path against path."""
from __future__ import annotations

import torch

from fewshot_mann.config import Config
from fewshot_mann.engine.evaluation import loss_fn
from fewshot_mann.memory.lrua.reference import reference_forward
from fewshot_mann.models.mann import MANN

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def make(cfg: Config, dtype, seed=0, memory_backend: str | None = None):
    torch.manual_seed(seed)
    model = MANN(cfg).to(dtype)
    if memory_backend is not None:
        model.memory_backend = memory_backend
    return model


def episode_inputs(cfg: Config, batch: int, dtype, seed=1):
    """Images in [0, 1] and one-hot previous labels, as to_tensors makes them; targets (B,T,1)."""
    g = torch.Generator().manual_seed(seed)
    steps, size, ways = cfg.episodes.steps, cfg.data.image_size, cfg.episodes.ways
    images = torch.rand(batch, steps, cfg.data.channels, size, size, generator=g).to(dtype)
    targets = torch.randint(0, ways, (batch, steps, 1), generator=g)
    onehot = torch.nn.functional.one_hot(targets[..., 0], ways).to(dtype)
    label_inputs = torch.zeros_like(onehot)
    label_inputs[:, 1:] = onehot[:, :-1]
    return images, label_inputs, targets


def outputs_and_grads(model, forward, cfg, images, label_inputs, targets):
    model.zero_grad(set_to_none=True)
    logits = forward(images, label_inputs)
    loss_fn(logits, targets, cfg.episodes).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(a, b, tol, what):
    assert a.shape == b.shape, what
    err = (a - b).abs().max().item()
    assert err <= tol, f"{what}: max difference {err:.3g} > {tol:g}"


def with_attrs(**attrs):
    """A path of ``check_paths_agree``: set these attributes of the model, run it."""
    def prepare(model):
        for name, value in attrs.items():
            setattr(model, name, value)
        return model
    return prepare


def reference_path(model):
    """The literal reference (reference.py) with the model's parameters."""
    return lambda x, y: reference_forward(model, x, y)


def check_paths_agree(cfg, dtype, batch, paths):
    """``paths``: [(name, prepare(model) -> forward)], the first the path under test. Its logits
    and the gradient of every parameter (each non-zero) equal every other path's to the
    dtype's tolerance, on one model and one batch of episodes."""
    model = make(cfg, dtype)
    inputs = episode_inputs(cfg, batch, dtype)
    results = [(name, *outputs_and_grads(model, prepare(model), cfg, *inputs)) for name, prepare in paths]
    (_, out, grads), tol = results[0], TOLERANCE[dtype]
    for other, other_out, _ in results[1:]:
        assert_same(out, other_out, tol, f"logits vs {other}")
    for name, g in grads.items():
        assert g.abs().sum() > 0, f"{name}: zero gradient"
        for other, _, other_grads in results[1:]:
            assert_same(g, other_grads[name], tol, f"d {name} vs {other}")
