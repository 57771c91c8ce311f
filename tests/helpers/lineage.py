"""Shared by the memory-lineage tests (NTM, DNC, transformer, kNN, comparison report):
fast-vs-literal comparison of outputs and gradients, and a tiny train -> evaluate round
trip through the real entry points on synthetic class banks."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import evaluate as evaluate_script
import train as train_script
from helpers import patch_banks, synthetic_bank
from fewshot_mann.cli import main as cli
from fewshot_mann.memory import backend

TINY_ARGS = ["--controller-size", "16", "--memory-slots", "8", "--memory-width", "5", "--read-heads", "2",
             "--transformer-layers", "1", "--transformer-heads", "2", "--transformer-width", "16",
             "--image-size", "6", "--ways", "3", "--instances", "4", "--batch-size", "4",
             "--eval-episodes", "8", "--no-rotations", "--no-progress"]


def use_synthetic_banks(monkeypatch, seed: int = 1):
    """Every entry point (train, evaluate, knn) loads these (train, held-out) banks."""
    banks = (synthetic_bank(classes=8, per_class=8, seed=seed), synthetic_bank(classes=6, per_class=8, seed=seed + 1))
    patch_banks(monkeypatch, banks)
    return banks


def train_and_evaluate(model_name: str, tmp_path, extra=(), episodes: int = 8, eval_every: int | None = None) -> dict:
    """train.main then evaluate.main --json on synthetic banks; returns the evaluation JSON."""
    out = tmp_path / model_name
    eval_every = episodes if eval_every is None else eval_every
    rc = train_script.main(["--model", model_name, "--episodes", str(episodes), "--eval-every", str(eval_every),
                            "--checkpoint-every", str(episodes), "--out", str(out), *TINY_ARGS, *extra])
    assert rc == 0
    assert (out / "checkpoint.pt").exists()
    result_path = tmp_path / f"{model_name}-eval.json"
    rc = evaluate_script.main(["--checkpoint", str(out / "checkpoint.pt"), "--episodes", "12", "--batch-size", "5",
                               "--json", str(result_path), "--no-progress"])
    assert rc == 0
    result = json.loads(result_path.read_text())
    assert result["config"]["model"]["model"] == model_name
    assert len(result["accuracy_by_instance"]) == 4 and len(result["ci95"]) == 4
    assert all(0.0 <= a <= 1.0 for a in result["accuracy_by_instance"])
    return result


def predict_from_checkpoint(checkpoint, tmp_path) -> list[dict]:
    """``fewshot-mann predict`` with the checkpoint alone: 3 classes of 2 support PNGs, 3 queries."""
    rng = np.random.default_rng(0)
    queries = tmp_path / "queries"
    queries.mkdir(exist_ok=True)
    for name in ("a", "b", "c"):
        pattern = (rng.random((6, 6)) > 0.5).astype(np.uint8) * 255
        (tmp_path / "support" / name).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(pattern).save(tmp_path / "support" / name / f"{i}.png")
        Image.fromarray(pattern).save(queries / f"{name}.png")
    out = tmp_path / "predictions.json"
    rc = cli.main(["predict", "--checkpoint", str(checkpoint), "--support", str(tmp_path / "support"),
                   "--query", str(queries), "--orders", "2", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 3 and all(row["prediction"] in ("a", "b", "c") for row in rows)
    return rows


def outputs_and_grads(fn, inputs: list[torch.Tensor], params: list[torch.Tensor], seed: int = 0):
    """Run ``fn(*inputs)`` (a tensor or tuple of tensors), then backpropagate a fixed random
    projection of every output. Returns (outputs, grads of inputs, grads of params)."""
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, inputs + params, allow_unused=True)
    zero = lambda t, ref: torch.zeros_like(ref) if t is None else t  # noqa: E731
    return ([o.detach() for o in outs], [zero(t, x) for t, x in zip(grads[:len(inputs)], inputs)],
            [zero(t, p) for t, p in zip(grads[len(inputs):], params)])


def assert_close_lists(a, b, atol, what):
    """Every pair within ``atol``, relative to the tensor's largest entry where that exceeds 1
    (the gradient with respect to a fresh 1e-6 memory is ~1e5, beyond float32's absolute 1e-5)."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"{what}[{i}]: shape {tuple(x.shape)} != {tuple(y.shape)}"
        if not x.numel():
            continue
        err = float((x - y).abs().max())
        scale = max(1.0, float(y.abs().max()))
        assert err <= atol * scale, f"{what}[{i}] differs by {err:.2e} (largest entry {scale:.2e})"


def memory_step(memory, implementation: str = "auto", like: torch.Tensor | None = None):
    """``step(h, state)`` of ``memory`` as ``memory.backend`` runs it for ``implementation``
    (default: what a model runs, ``auto``)."""
    chosen = backend.choose(implementation, memory, torch.zeros(1) if like is None else like)
    return backend.step_function(memory, chosen)


def mann_forward_with_step(model, step, images, label_inputs):
    """The model's own forward (step by step: the autograd backend) with its memory's ``step``
    replaced by ``step(memory, h, state)``."""
    memory, chosen = model.memory, model.memory_backend
    memory.step = lambda h, state: step(memory, h, state)
    model.memory_backend = "autograd"
    try:
        return model(images, label_inputs)
    finally:
        del memory.step
        model.memory_backend = chosen


def state_tensors_alive_after_backward(model, images, label_inputs) -> tuple[int, int]:
    """Train-step the model once with weak references to every state tensor its memory's
    ``step`` returns; returns (how many are still alive after backward, how many there were).
    Nothing may outlive the step: a tensor kept alive by a reference cycle through an autograd
    Function's ``ctx`` leaks every step's memory for the rest of the process."""
    import weakref

    step_function, refs = backend.step_function, []

    def recording_step_function(memory, implementation):
        step = step_function(memory, implementation)

        def recording_step(h, state):
            reads, new = step(h, state)
            refs.extend(weakref.ref(t) for t in new if t is not None)
            return reads, new
        return recording_step

    backend.step_function = recording_step_function
    try:
        model(images, label_inputs).square().sum().backward()
    finally:
        backend.step_function = step_function
    return sum(r() is not None for r in refs), len(refs)
