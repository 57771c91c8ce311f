"""The C++ LRUA kernel (lrua/kernel.py, lrua.cpp) against sequence.py and the literal reference.

Outputs and the gradient of every input and parameter must agree to 1e-5 (float32) or
1e-10 (float64), with and without key strength, at odd sizes and at the paper's sizes.
Every test that needs the kernel is skipped, with the reason, where it cannot be built
(no C++ compiler or ninja); the fallback to fast.py is tested everywhere.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from helpers import tiny_config
from fewshot_mann.memory import backend
from fewshot_mann.memory.lrua import kernel as cpp
from fewshot_mann.memory.lrua import sequence as fast
from fewshot_mann.config import Config
from helpers.lrua import (TOLERANCE, assert_same, check_paths_agree, episode_inputs, make, outputs_and_grads,
                       reference_path, with_attrs)


@pytest.fixture
def kernel(monkeypatch):
    """The loaded kernel (building it on first use), or a skip saying why not."""
    monkeypatch.delenv(backend.ENV, raising=False)
    reason = backend.kernel_unavailable_reason()
    if reason is not None:
        pytest.skip(f"the C++ LRUA kernel cannot be built or loaded here: {reason}")
    return cpp.ops()


def sequence_inputs(T, B, H, R, N, W, key_strength, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = R * W + R * (2 if key_strength else 1)
    args = [torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64),
            0.3 * torch.randn(4 * H, H + R * W, generator=g, dtype=torch.float64),
            0.5 * torch.randn(rows, H, generator=g, dtype=torch.float64),
            0.3 * torch.randn(rows, generator=g, dtype=torch.float64)]
    grad_out = torch.randn(T, B, H + R * W, generator=g, dtype=torch.float64)
    return [a.to(dtype).requires_grad_() for a in args], grad_out.to(dtype)


def run_sequence(fn, args, grad_out, N, R, key_strength):
    for a in args:
        a.grad = None
    out = fn(*args, memory_slots=N, num_read_heads=R, usage_decay=0.95, key_strength=key_strength)
    out.backward(grad_out)
    return out.detach(), [a.grad.clone() for a in args]


SIZES = {  # T, B, H, R, N, W
    "odd: batch 3, 2 heads, 7 slots": (9, 3, 5, 2, 7, 3),
    "one head, 5 slots": (12, 2, 4, 1, 5, 2),
    "3 heads, 17 slots (a masked chunk)": (8, 4, 6, 3, 17, 5),
    "6 heads (generic head count)": (6, 2, 5, 6, 20, 4),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("key_strength", [False, True])
@pytest.mark.parametrize("size", list(SIZES))
def test_kernel_matches_fast_path_on_random_inputs(kernel, size, key_strength, dtype):
    T, B, H, R, N, W = SIZES[size]
    args, grad_out = sequence_inputs(T, B, H, R, N, W, key_strength, dtype)
    fast_out, fast_grads = run_sequence(fast.lrua_sequence, args, grad_out, N, R, key_strength)
    cpp_out, cpp_grads = run_sequence(cpp.cpp_lrua_sequence, args, grad_out, N, R, key_strength)
    tol = TOLERANCE[dtype]
    assert_same(cpp_out, fast_out, tol, "outputs")
    for name, a, b in zip(("gates_in", "recurrent_weight", "control_weight", "control_bias"), cpp_grads, fast_grads):
        assert a.abs().sum() > 0, f"{name}: zero gradient"
        assert_same(a, b, tol, f"d {name}")


def check_model_against_fast_and_reference(cfg, dtype, batch):
    model = make(cfg, dtype)
    like = torch.zeros(1, dtype=dtype)
    assert backend.choose(model.memory_backend, model.memory, like) == "kernel"  # the kernel is MANN's default
    check_paths_agree(cfg, dtype, batch, [("C++ kernel", with_attrs(memory_backend="kernel")),
                                          ("fast path", with_attrs(memory_backend="sequence")),
                                          ("reference", reference_path)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("key_strength", [False, True])
def test_tiny_model_matches_fast_path_and_reference(kernel, dtype, key_strength):
    check_model_against_fast_and_reference(tiny_config(key_strength=key_strength), dtype, batch=3)


@pytest.mark.parametrize("key_strength", [False, True])
def test_odd_sized_model_matches_fast_path_and_reference(kernel, key_strength):
    cfg = tiny_config(key_strength=key_strength, num_read_heads=2, memory_slots=7, memory_width=3, controller_size=5)
    cfg.episodes.ways, cfg.episodes.instances = 3, 4
    check_model_against_fast_and_reference(cfg, torch.float32, batch=3)


@pytest.mark.parametrize("key_strength", [False, True])
def test_paper_sized_model_matches_fast_path_and_reference(kernel, key_strength):
    cfg = Config()  # 5-way, 10 instances, controller 200, memory 128 x 40, 4 heads
    cfg.model.key_strength = key_strength
    check_model_against_fast_and_reference(cfg, torch.float32, batch=2)


def test_gradcheck_of_the_kernel(kernel):
    T, B, H, R, N, W = 4, 2, 3, 2, 5, 3
    for key_strength in (False, True):
        args, _ = sequence_inputs(T, B, H, R, N, W, key_strength, torch.float64, seed=3)
        run = lambda *a: cpp.cpp_lrua_sequence(*a, memory_slots=N, num_read_heads=R, usage_decay=0.9,  # noqa: E731
                                               key_strength=key_strength)
        assert torch.autograd.gradcheck(run, tuple(args), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("segment", [1, 4, 100])
def test_memory_segments_recomputed_in_backward_give_the_same_gradients(kernel, monkeypatch, segment):
    args, grad_out = sequence_inputs(15, 3, 6, 3, 10, 5, True, torch.float32)  # 15 steps: segments of 4 leave a part
    _, stored = run_sequence(cpp.cpp_lrua_sequence, args, grad_out, 10, 3, True)
    monkeypatch.setattr(cpp, "SEGMENT", segment)
    _, recomputed = run_sequence(cpp.cpp_lrua_sequence, args, grad_out, 10, 3, True)
    for a, b in zip(stored, recomputed):
        assert torch.equal(a, b)  # the recomputation is bit-identical


def test_inference_equals_training_forward_and_chunks(kernel, monkeypatch):
    cfg = tiny_config(key_strength=True)
    model = make(cfg, torch.float32)
    images, label_inputs, _ = episode_inputs(cfg, 5, torch.float32)
    with_grad = model(images, label_inputs)
    with torch.inference_mode():
        assert torch.equal(model(images, label_inputs), with_grad)
        monkeypatch.setattr(fast, "INFERENCE_CHUNK", 2)  # MANN splits large CPU batches: 2, 2, 1
        assert_same(model(images, label_inputs), with_grad.detach(), 1e-6, "chunked logits")


@pytest.mark.parametrize("switch", ["set_aten_gemm", "set_step_gemm"])
def test_other_matmul_branches_give_the_same_results(kernel, switch):
    # set_aten_gemm(True): every matmul through at::addmm_out (no BLAS symbols);
    # set_step_gemm(False): the per-step matmuls through BLAS instead of the register-blocked loop.
    args, grad_out = sequence_inputs(7, 19, 5, 2, 9, 4, True, torch.float32)  # batch 19: a 16-row block and 3 rows
    out, grads = run_sequence(cpp.cpp_lrua_sequence, args, grad_out, 9, 2, True)
    old = getattr(kernel, switch)(switch == "set_aten_gemm")
    try:
        other_out, other_grads = run_sequence(cpp.cpp_lrua_sequence, args, grad_out, 9, 2, True)
    finally:
        getattr(kernel, switch)(old)
    assert_same(other_out, out, 1e-5, "outputs")
    for a, b in zip(other_grads, grads):
        assert_same(a, b, 1e-5, "gradients")


@pytest.mark.parametrize("key_strength", [False, True])
def test_threads_split_the_batch_without_changing_results(kernel, key_strength):
    # Each thread runs the whole time loop for its own block of episodes (csrc/lrua.cpp).
    # The tests otherwise run on one thread; here 2 and 3 threads split a batch of 19 into
    # uneven blocks (10 + 9; 7 + 7 + 5: the 16-, 8- and odd-row matmul paths). Everything
    # computed per episode is bit-identical; the weight gradients sum over all episodes in
    # one BLAS call, whose own threading may reorder the sum, so they agree to float rounding.
    args, grad_out = sequence_inputs(11, 19, 6, 3, 13, 4, key_strength, torch.float32)
    old = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results[threads] = run_sequence(cpp.cpp_lrua_sequence, args, grad_out, 13, 3, key_strength)
    finally:
        torch.set_num_threads(old)
    out, (d_gates, *d_weights) = results[1]
    for threads in (2, 3):
        other_out, (other_d_gates, *other_d_weights) = results[threads]
        assert torch.equal(other_out, out), f"{threads} threads: outputs differ"
        assert torch.equal(other_d_gates, d_gates), f"{threads} threads: d gates_in differs"
        for a, b in zip(other_d_weights, d_weights):
            assert_same(a, b, TOLERANCE[torch.float32], f"{threads} threads: weight gradients")
    # and the split run is still fast.py's mathematics (gradients summed over 19 episodes
    # reach ~100 here: compared relative to their size).
    fast_out, fast_grads = run_sequence(fast.lrua_sequence, args, grad_out, 13, 3, key_strength)
    assert_same(results[2][0], fast_out, TOLERANCE[torch.float32], "2 threads vs fast.py: outputs")
    for a, b in zip(results[2][1], fast_grads):
        scale = max(1.0, b.abs().max().item())
        assert_same(a / scale, b / scale, TOLERANCE[torch.float32], "2 threads vs fast.py: gradients")


def test_backward_twice_with_retain_graph(kernel):
    args, grad_out = sequence_inputs(6, 2, 4, 2, 6, 3, False, torch.float64)
    out = cpp.cpp_lrua_sequence(*args, memory_slots=6, num_read_heads=2, usage_decay=0.95, key_strength=False)
    first = torch.autograd.grad(out, args, grad_out, retain_graph=True)
    second = torch.autograd.grad(out, args, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_mann_uses_the_kernel_on_cpu_by_default(kernel, monkeypatch):
    cfg = tiny_config()
    model = make(cfg, torch.float32)
    inputs = episode_inputs(cfg, 2, torch.float32)

    def fail(*args, **kwargs):
        raise AssertionError("fast.lrua_sequence ran instead of the C++ kernel")

    monkeypatch.setattr(fast, "lrua_sequence", fail)
    outputs_and_grads(model, model, cfg, *inputs)
    with torch.inference_mode():
        model(*inputs[:2])


def fast_path_results(cfg, inputs):
    model = make(cfg, torch.float32, memory_backend="sequence")
    return outputs_and_grads(model, model, cfg, *inputs)


def test_env_var_turns_the_kernel_off_without_a_warning(monkeypatch):
    monkeypatch.setenv(backend.ENV, "0")
    monkeypatch.setattr(cpp, "_STATE", {})
    monkeypatch.setattr(cpp, "_build_and_load", lambda: pytest.fail("FEWSHOT_MANN_CPP=0 must not build"))
    cfg = tiny_config()
    inputs = episode_inputs(cfg, 2, torch.float32)
    model = make(cfg, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, grads = outputs_and_grads(model, model, cfg, *inputs)
    fast_out, fast_grads = fast_path_results(cfg, inputs)
    assert torch.equal(out, fast_out) and all(torch.equal(grads[n], fast_grads[n]) for n in grads)
    assert backend.kernel_unavailable_reason() == "turned off by FEWSHOT_MANN_CPP=0"


def test_build_failure_falls_back_to_the_fast_path_with_one_warning(monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    monkeypatch.setattr(cpp, "_STATE", {})

    def broken():
        raise RuntimeError("Error building extension 'x'\nlrua.cpp:1: error: no compiler here\nmore")

    monkeypatch.setattr(cpp, "_build_and_load", broken)
    cfg = tiny_config(key_strength=True)
    inputs = episode_inputs(cfg, 2, torch.float32)
    model = make(cfg, torch.float32)
    with pytest.warns(RuntimeWarning, match=r"C\+\+ LRUA kernel could not be built or loaded .*no compiler here") as caught:
        out, grads = outputs_and_grads(model, model, cfg, *inputs)
        outputs_and_grads(model, model, cfg, *inputs)  # later calls: fast.py, no second warning
        with torch.inference_mode():
            model(*inputs[:2])
    assert len([w for w in caught if "C++ LRUA kernel" in str(w.message)]) == 1
    fast_out, fast_grads = fast_path_results(cfg, inputs)
    assert torch.equal(out, fast_out) and all(torch.equal(grads[n], fast_grads[n]) for n in grads)
    assert "no compiler here" in cpp.unavailable_reason()


def test_other_dtypes_and_devices_go_to_the_fast_path(monkeypatch):
    monkeypatch.setattr(cpp, "_STATE", {})
    monkeypatch.setattr(cpp, "_build_and_load", lambda: pytest.fail("half precision must not build the kernel"))
    args, _ = sequence_inputs(4, 2, 3, 2, 5, 2, False, torch.bfloat16)
    with torch.no_grad():
        out = cpp.cpp_lrua_sequence(*args, memory_slots=5, num_read_heads=2, usage_decay=0.95, key_strength=False)
        ref = fast.lrua_sequence(*args, memory_slots=5, num_read_heads=2, usage_decay=0.95, key_strength=False)
    assert torch.equal(out, ref)
