"""The fast MANN-LRUA path (lrua/sequence.py) against the autograd path and the literal reference.

Outputs and the gradient of every parameter must agree to 1e-5 (float32) or 1e-10
(float64), with and without the key-strength extension, on tiny models and at the
paper's sizes with a small batch; gradcheck checks the hand-written backward itself.
"""
from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_config
from fewshot_mann.memory.lrua import sequence as fast
from fewshot_mann.config import Config
from fewshot_mann.engine.evaluation import loss_fn
from fewshot_mann.memory.lrua.equations import least_used
from helpers.lrua import assert_same, check_paths_agree, episode_inputs, make, outputs_and_grads, reference_path, with_attrs


@pytest.fixture(autouse=True)
def _fast_py_not_the_cpp_kernel(monkeypatch):
    """These tests are about sequence.py: MANN's default (auto) skips the C++ kernel
    (tests/memory/test_cpp.py), as with FEWSHOT_MANN_CPP=0."""
    monkeypatch.setenv("FEWSHOT_MANN_CPP", "0")


def check_against_slow_paths(cfg, dtype, batch):
    check_paths_agree(cfg, dtype, batch, [("fast path", with_attrs(memory_backend="sequence")),
                                          ("autograd path", with_attrs(memory_backend="autograd")),
                                          ("reference", reference_path)])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("key_strength", [False, True])
def test_tiny_model_matches_autograd_path_and_reference(dtype, key_strength):
    cfg = tiny_config(key_strength=key_strength)
    check_against_slow_paths(cfg, dtype, batch=3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("key_strength", [False, True])
def test_paper_sized_model_matches_autograd_path_and_reference(dtype, key_strength):
    cfg = Config()  # 5-way, 10 instances, controller 200, memory 128 x 40, 4 heads, 20x20
    cfg.model.key_strength = key_strength
    check_against_slow_paths(cfg, dtype, batch=2)


def test_conv_encoder_features_flow_through_the_fast_path():
    cfg = tiny_config(encoder="conv")
    cfg.data.image_size = 8
    check_against_slow_paths(cfg, torch.float64, batch=2)


def test_one_read_head_and_odd_sizes():
    cfg = tiny_config(num_read_heads=1, memory_slots=7, memory_width=3, controller_size=5)
    cfg.episodes.ways, cfg.episodes.instances = 3, 5
    check_against_slow_paths(cfg, torch.float64, batch=4)


@pytest.mark.parametrize("segment", [1, 4, 100])
def test_memory_segments_recomputed_in_backward_give_the_same_gradients(monkeypatch, segment):
    cfg = tiny_config()
    cfg.episodes.instances = 3  # 15 steps: segments of 4 leave a partial one
    model = make(cfg, torch.float32)
    inputs = episode_inputs(cfg, 3, torch.float32)
    _, stored = outputs_and_grads(model, model, cfg, *inputs)
    monkeypatch.setattr(fast, "SEGMENT", segment)
    _, recomputed = outputs_and_grads(model, model, cfg, *inputs)
    for name, g in stored.items():
        assert torch.equal(g, recomputed[name]), name  # recomputation is bit-identical


def test_inference_path_equals_training_path_also_in_chunks(monkeypatch):
    cfg = tiny_config(key_strength=True)
    model = make(cfg, torch.float32)
    images, label_inputs, _ = episode_inputs(cfg, 5, torch.float32)
    with_grad = model(images, label_inputs)
    with torch.inference_mode():
        assert torch.equal(model(images, label_inputs), with_grad)
        monkeypatch.setattr(fast, "INFERENCE_CHUNK", 2)  # 5 episodes -> chunks 2, 2, 1
        # (matmuls over fewer rows may round differently, hence not bit-equal)
        assert_same(model(images, label_inputs), with_grad.detach(), 1e-6, "chunked logits")


def test_gradcheck_of_the_hand_written_backward():
    torch.manual_seed(0)
    T, B, H, R, N, W = 4, 2, 3, 2, 5, 3
    for key_strength in (False, True):
        rows = R * W + R * (2 if key_strength else 1)
        args = (torch.randn(T, B, 4 * H, dtype=torch.float64, requires_grad=True),
                (0.5 * torch.randn(4 * H, H + R * W, dtype=torch.float64)).requires_grad_(),
                torch.randn(rows, H, dtype=torch.float64, requires_grad=True),
                torch.randn(rows, dtype=torch.float64, requires_grad=True))
        run = lambda *a: fast.lrua_sequence(*a, memory_slots=N, num_read_heads=R, usage_decay=0.9,  # noqa: E731
                                            key_strength=key_strength)
        assert torch.autograd.gradcheck(run, args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("extensions", [{"write_vector": True}, {"memory_input": True},
                                        {"write_vector": True, "memory_input": True, "previous_image": True,
                                         "key_strength": True}])
def test_write_vector_and_memory_input_match_the_autograd_path(dtype, extensions):
    """--write-vector (eq. 8 writes its own vector) and --memory-input (the interface reads the step's input
    beside h) on the fast path: the same logits and gradients as the readable equations."""
    cfg = tiny_config(**extensions)
    model = make(cfg, dtype)
    from fewshot_mann.memory import backend
    assert backend.choose("auto", model.memory, torch.zeros(1, dtype=dtype)) == "sequence"  # never the kernel
    assert backend.sequence_function(model.memory, "sequence") is fast.lrua_sequence  # the whole recurrence
    calls = []
    real = fast._run_forward
    fast_spy = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    import unittest.mock
    with unittest.mock.patch.object(fast, "_run_forward", fast_spy):
        with_attrs(memory_backend="sequence")(model)(*episode_inputs(cfg, 2, dtype)[:2])
    assert calls  # the fast path ran (not the step-by-step memory)
    check_paths_agree(cfg, dtype, batch=3, paths=[("fast path", with_attrs(memory_backend="sequence")),
                                                  ("autograd path", with_attrs(memory_backend="autograd"))])


def test_gradcheck_of_the_written_vector_and_the_control_input():
    torch.manual_seed(0)
    T, B, H, R, N, W = 4, 2, 3, 2, 5, 3
    rows = R * W + R + R * W  # keys, gates, written vectors
    args = (torch.randn(T, B, 4 * H, dtype=torch.float64, requires_grad=True),
            (0.5 * torch.randn(4 * H, H + R * W, dtype=torch.float64)).requires_grad_(),
            torch.randn(rows, H, dtype=torch.float64, requires_grad=True),
            torch.randn(rows, dtype=torch.float64, requires_grad=True),
            torch.randn(T, B, rows, dtype=torch.float64, requires_grad=True))
    run = lambda g, wr, wc, b, x: fast.lrua_sequence(  # noqa: E731
        g, wr, wc, b, memory_slots=N, num_read_heads=R, usage_decay=0.9, key_strength=False, control_input=x,
        write_vector=True)
    assert torch.autograd.gradcheck(run, args, eps=1e-6, atol=1e-7)
    stored = run(*args)  # the training loop (stores what backward reads)
    with torch.no_grad():  # the inference loop (nothing stored) gives the same outputs
        assert torch.allclose(run(*args), stored, atol=1e-12)


def test_backward_twice_with_retain_graph():
    cfg = tiny_config()
    model = make(cfg, torch.float64)
    images, label_inputs, targets = episode_inputs(cfg, 2, torch.float64)
    loss = loss_fn(model(images, label_inputs), targets, cfg.episodes)
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_least_used_selection_breaks_ties_like_the_stable_sort(dtype):
    g = torch.Generator().manual_seed(0)
    usage = torch.randint(0, 4, (64, 9), generator=g).to(dtype) * 0.25  # many ties
    usage[0] = 0.0
    usage[1] = torch.tensor([3e-39, 0.0, 1e-45, 0.0, 2.0, float("inf"), 1.0, 0.5, 3e-39], dtype=dtype)
    for n in (1, 3, 9):
        out = torch.empty(64, 2, 9, dtype=dtype)
        fast.LeastUsed(usage, n).select(usage, out)
        w_lu, zero = least_used(usage, n)
        assert torch.equal(out[:, 1], w_lu), n
        assert torch.equal(out[:, 0], zero), n


def test_state_dict_and_checkpoints_are_unchanged():
    cfg = tiny_config(key_strength=True)
    model = make(cfg, torch.float32)
    assert sorted(model.state_dict()) == sorted([
        "input_proj.weight", "input_proj.bias", "recurrent.weight", "memory.key.weight", "memory.key.bias",
        "memory.gate.weight", "memory.gate.bias", "memory.strength.weight", "memory.strength.bias",
        "output.weight", "output.bias"])
    other = make(cfg, torch.float32, seed=5)
    other.memory_backend = "autograd"
    other.load_state_dict(model.state_dict())
    images, label_inputs, _ = episode_inputs(cfg, 2, torch.float32)
    assert torch.allclose(other(images, label_inputs), model(images, label_inputs), atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    cfg = tiny_config(key_strength=True)
    model = make(cfg, torch.float64)
    images, label_inputs, targets = episode_inputs(cfg, 3, torch.float64)
    cpu_out, cpu_grads = outputs_and_grads(model, model, cfg, images, label_inputs, targets)
    model = model.cuda()
    gpu_out, gpu_grads = outputs_and_grads(model, model, cfg, images.cuda(), label_inputs.cuda(), targets.cuda())
    assert_same(gpu_out.cpu(), cpu_out, 1e-10, "logits")
    for name, g in cpu_grads.items():
        assert_same(gpu_grads[name].cpu(), g, 1e-10, name)


@pytest.mark.slow  # a few paper-sized reference steps: seconds
def test_bench_times_both_loops_and_writes_json(tmp_path, capsys):
    import json

    from fewshot_mann.cli import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--threads", "1", "--seconds", "0.05", "--rounds", "1", "--eval-batch-sizes", "3",
                       "--synthetic-classes", "6", "--models", "mann,ff", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["training"]) == {"reference", "mann", "ff"}
    for r in res["training"].values():
        assert r["episodes"] >= 16 and r["episodes_per_s"] > 0 and r["cpu_episodes_per_s"] > 0
    assert res["speedup_cpu"] > 0 and res["peak_rss_mib"] > 0
    assert [(r["model"], r["batch_size"]) for r in res["evaluation"]] == [("mann", 3), ("ff", 3)]
    assert "x ref (CPU)" in capsys.readouterr().out


def test_bench_times_backbone_feature_extraction(tmp_path, capsys):
    from fewshot_mann.cli import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--threads", "1", "--seconds", "0.05", "--rounds", "1", "--eval-batch-sizes", "3",
                       "--synthetic-classes", "10", "--no-reference", "--backbones", "fewshot:conv4",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["backbones"]
    assert [r["encoder"] for r in rows] == ["fewshot:conv4"] and rows[0]["image_size"] == 28
    assert rows[0]["contiguous_images_per_s"] > 0 and rows[0]["channels_last_images_per_s"] > 0
    assert "backbone feature extraction (inference mode), images/s" in capsys.readouterr().out


def test_bench_rejects_unknown_models():
    from fewshot_mann.cli import bench

    assert bench.main(["--models", "mann,nope"]) == 2


# --- the removed torch.compile option: still accepted from old configs, with a notice ---

def test_compile_of_old_configs_and_flags_is_ignored_with_a_notice(tmp_path, capsys):
    from fewshot_mann.cli.train import config_from_args, parse_train_args

    old = Config.from_dict({"model": {"model": "mann", "key_strength": True, "compile": True}})
    assert old.to_dict() == Config().to_dict()
    for argv in (["--compile"], ["--no-compile"]):
        cfg = config_from_args(parse_train_args([*argv, "--out", "x"]))
        assert cfg.to_dict() == Config().to_dict()
        assert capsys.readouterr().err.count("deprecated and ignored") == 1
    path = tmp_path / "c.json"
    path.write_text('{"compile": true, "model": {"compile": false, "memory_slots": 64}}')
    cfg = config_from_args(parse_train_args(["-c", str(path), "--out", "x"]))
    assert cfg.model.memory_slots == 64 and "compile" not in cfg.to_dict()["model"]
    assert capsys.readouterr().err.count("deprecated and ignored") == 2


def test_adam_is_fused_and_resumes_from_a_checkpoint_of_the_unfused_adam():
    import copy

    from fewshot_mann.engine.resume import initial_state, new_optimizer, restore

    cfg = tiny_config()
    model = make(cfg, torch.float32)
    old = torch.optim.Adam(model.parameters(), lr=1e-3)  # as checkpoints before the fused Adam saved it
    inputs = episode_inputs(cfg, 2, torch.float32)
    outputs_and_grads(model, model, cfg, *inputs)
    old.step()
    saved = copy.deepcopy(old.state_dict())  # load_state_dict may share tensors: each optimiser gets its own
    ckpt = {"model": model.state_dict(), "optimizer": copy.deepcopy(saved), "state": initial_state(cfg)}
    optimizer = new_optimizer(model, 1e-3)
    assert optimizer.param_groups[0]["fused"] is True
    restore(model, optimizer, initial_state(cfg), ckpt, "ckpt.pt")
    assert optimizer.param_groups[0]["fused"] is True
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    twin = make(cfg, torch.float32)
    twin.load_state_dict(before)
    old_twin = torch.optim.Adam(twin.parameters(), lr=1e-3)
    old_twin.load_state_dict(saved)
    outputs_and_grads(model, model, cfg, *inputs)
    outputs_and_grads(twin, twin, cfg, *inputs)
    optimizer.step()
    old_twin.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):  # the same update
        assert not torch.equal(p, before[name]) and torch.allclose(p, q, atol=1e-7, rtol=0), name
