"""Every model: shapes, finite gradients for every parameter, seeded initialisation."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from fewshot_mann.models.registry import build_model, count_parameters
from fewshot_mann.engine.trainer import new_model

CASES = [("mann", "linear", "onehot"), ("mann", "conv", "onehot"), ("mann", "linear", "string"),
         ("lstm", "linear", "onehot"), ("ff", "linear", "onehot")]


@pytest.mark.parametrize("model_name,encoder,labels", CASES)
def test_every_parameter_gets_a_finite_gradient(model_name, encoder, labels):
    cfg = tiny_config(model=model_name, encoder=encoder)
    cfg.episodes.labels = labels
    cfg.data.image_size = 8
    torch.manual_seed(0)
    model = build_model(cfg)
    b, t = 2, cfg.episodes.steps
    logits = model(torch.rand(b, t, 1, 8, 8), torch.rand(b, t, cfg.episodes.label_size))
    assert logits.shape == (b, t, cfg.episodes.label_size)
    logits.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_initialisation_is_seeded_and_leaves_global_rng_alone():
    cfg = tiny_config()
    state = torch.get_rng_state()
    a, b = new_model(cfg), new_model(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    cfg.train.seed = 1
    c = new_model(cfg)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_paper_sized_mann_parameter_count():
    from fewshot_mann.config import Config
    cfg = Config()
    cfg.model.key_strength = False  # the paper's MANN (the default adds the key strength)
    # 405 inputs -> 4*200 gates, 360 recurrent -> 800, keys 200 -> 160, gates 200 -> 4, output 360 -> 5
    expected = 405 * 800 + 800 + 360 * 800 + 200 * 160 + 160 + 200 * 4 + 4 + 360 * 5 + 5
    assert count_parameters(build_model(cfg)) == expected
    # the key strength: one learned strength per read head (200 -> 4)
    assert count_parameters(build_model(Config())) == expected + 200 * 4 + 4


@pytest.mark.parametrize("model_name", ["ntm", "dnc"])
def test_fast_memory_step_frees_every_step_after_backward(model_name):
    """ntm/sequence.NTMStep / dnc/sequence.DNCStep keep no output on their ctx: such a reference cycle
    kept every step's tensors alive and leaked a training run's memory (23 GB)."""
    from helpers.lineage import state_tensors_alive_after_backward

    cfg = tiny_config(model=model_name)
    torch.manual_seed(0)
    model = build_model(cfg)
    from fewshot_mann.memory import backend
    assert backend.choose(model.memory_backend, model.memory, torch.zeros(1)) == "sequence"
    alive, total = state_tensors_alive_after_backward(model, torch.rand(2, 5, 1, 6, 6),
                                                      torch.rand(2, 5, cfg.episodes.label_size))
    assert total > 0 and alive == 0, f"{alive} of {total} state tensors outlived backward"


def test_keyed_memory_skips_a_zero_map_only_where_it_changes_nothing():
    """The untrained (all-zero) residual map is skipped at inference: the same logits, and a trained
    (non-zero) map is still applied."""
    import torch
    from helpers import tiny_config
    from fewshot_mann.models.keyed import KeyedMemory
    cfg = tiny_config()
    cfg.model.model = "keyed"
    model = KeyedMemory(cfg).eval()
    images = torch.rand(3, 6, *([cfg.data.channels, cfg.data.image_size, cfg.data.image_size]))
    labels = torch.nn.functional.one_hot(torch.randint(0, cfg.episodes.ways, (3, 6)), cfg.episodes.ways).float()
    with torch.enable_grad():
        reference = model(images, labels).detach()
    with torch.inference_mode():
        assert torch.allclose(model(images, labels), reference, atol=1e-6)
    with torch.no_grad():
        model.residual.weight.normal_(0, 0.5)
        trained = model(images, labels)
    with torch.enable_grad():
        assert torch.allclose(trained, model(images, labels).detach(), atol=1e-6)
    assert not torch.allclose(trained, reference, atol=1e-3)


def test_previous_image_input_holds_the_image_its_label_belongs_to():
    """--previous-image: the controller's input at step t is [features(x_t), features(x_{t-1})] (zeros at
    t=0) beside y_{t-1}; the image part a step's input cannot be projected per image then."""
    cfg = tiny_config(previous_image=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    images = torch.rand(2, 5, 1, 6, 6)
    feats = model.encoder(images)
    encoded = model.encode(images)
    assert encoded.shape == (2, 5, 2 * feats.shape[-1])
    assert torch.equal(encoded[..., :feats.shape[-1]], feats)
    assert torch.equal(encoded[:, 1:, feats.shape[-1]:], feats[:, :-1])
    assert not encoded[:, 0, feats.shape[-1]:].any()
    assert model.input_proj.in_features == 2 * feats.shape[-1] + cfg.episodes.label_size
    assert not model.projects_images
    plain = tiny_config()
    torch.manual_seed(0)
    without = build_model(plain)
    assert without.projects_images and without.encode(images).shape == feats.shape
    # evaluation (which projects each distinct image once where it can) runs the same maths as forward
    from helpers import synthetic_bank
    from fewshot_mann.engine.evaluation import evaluate
    result = evaluate(model.eval(), synthetic_bank(classes=6, size=6), cfg.episodes, episodes=4, seed=3)
    assert len(result["accuracy_by_instance"]) == cfg.episodes.instances


def test_write_vector_stores_its_own_vector_not_the_read_key():
    """--write-vector: eq. 8 writes v = tanh(W_v h), the read key still addresses; it runs the sequence backend
    (the C++ kernel writes the keys), and without it the memory is the paper's."""
    from fewshot_mann.memory import backend

    cfg = tiny_config(write_vector=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    mem = model.memory
    assert mem.implementations == ("autograd", "sequence")
    assert backend.choose("auto", mem, torch.zeros(1)) == "sequence"
    h = torch.randn(2, cfg.model.controller_size)
    state = mem.initial_state(2)
    _, (memory, *_rest) = mem.step(h, state)
    written = memory - state[0] * (1 - state[4]).unsqueeze(-1)  # what eq. 8 added
    keys = torch.tanh(mem.key(h)).view(2, cfg.model.num_read_heads, -1)
    vectors = torch.tanh(mem.content(h)).view_as(keys)
    w_write = state[3].unsqueeze(1).expand(-1, cfg.model.num_read_heads, -1)  # alpha * 0 + (1 - alpha) * w_lu
    alpha = torch.sigmoid(mem.gate(h)).unsqueeze(-1)
    assert torch.allclose(written, torch.bmm(((1 - alpha) * w_write).transpose(1, 2), vectors), atol=1e-6)
    assert not torch.allclose(written, torch.bmm(((1 - alpha) * w_write).transpose(1, 2), keys), atol=1e-3)
    plain = build_model(tiny_config()).memory
    assert plain.content is None and "kernel" in plain.implementations


def test_memory_input_lets_the_keys_read_the_steps_input():
    """--memory-input: the memory's interface layers read [h_t, the step's input], so its keys change with the
    step's image even where the controller state would not; the model runs without the C++ kernel, its
    evaluation does not project images, and evaluate() runs it."""
    cfg = tiny_config(memory_input=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    width = model.encoder.out_features + cfg.episodes.label_size
    assert model.memory.key.in_features == cfg.model.controller_size + width
    assert "kernel" not in model.memory.implementations and not model.projects_images
    model.memory_backend = "autograd"  # the step-by-step path, to watch what each step's memory reads
    seen = []
    step = model.memory.step
    model.memory.step = lambda h, state: seen.append(h) or step(h, state)
    images, labels = torch.rand(2, 4, 1, 6, 6), torch.rand(2, 4, cfg.episodes.label_size)
    model(images, labels)
    assert len(seen) == 4
    inputs = torch.cat([model.encode(images), labels], dim=-1)
    for t, h in enumerate(seen):
        assert torch.equal(h[:, cfg.model.controller_size:], inputs[:, t])
    model.memory.step = step
    plain = build_model(tiny_config())
    assert plain.memory.key.in_features == cfg.model.controller_size
    from helpers import synthetic_bank
    from fewshot_mann.engine.evaluation import evaluate
    assert len(evaluate(model.eval(), synthetic_bank(classes=6, size=6), cfg.episodes, episodes=3)["ci95"]) == 10


@pytest.mark.parametrize("model_name", ["mann", "ntm", "dnc"])
def test_the_input_extensions_train_every_memory(model_name):
    """--memory-input with --previous-image on each memory (NTM and DNC keep their hand-written steps, which
    read the wider interface as they read h): every parameter gets a finite, non-zero gradient."""
    cfg = tiny_config(model=model_name, memory_input=True, previous_image=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    model(torch.rand(2, 5, 1, 6, 6), torch.rand(2, 5, cfg.episodes.label_size)).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
