"""``--memory-init features``: the LRUA MANN starts as a soft nearest-neighbour reader over its features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import synthetic_bank, tiny_config
from fewshot_mann.engine.evaluation import evaluate
from fewshot_mann.errors import UserError
from fewshot_mann.models.registry import build_model

EXTENSIONS = dict(previous_image=True, write_vector=True, memory_input=True)


def features_config(**model):
    cfg = tiny_config(**{**EXTENSIONS, "memory_init": "features", "memory_slots": 64, "memory_width": 6 * 6 + 5, **model})
    cfg.episodes.ways, cfg.episodes.instances = 5, 6
    return cfg


@pytest.mark.parametrize("backend", ["autograd", "sequence"])
def test_untrained_model_answers_the_label_of_the_nearest_stored_image(backend):
    """Before any training, every answer from the 2nd presentation of a class on is the label of the earlier image
    nearest the step's own (cosine on the encoder's features, here the pixels): what a randomly initialised model
    with the same extensions does not do."""
    bank, cfg = synthetic_bank(classes=10, per_class=12, size=6), features_config()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.memory_backend = backend
    result = evaluate(model, bank, cfg.episodes, episodes=40, seed=3)
    assert min(result["accuracy_by_instance"][1:]) >= 0.97
    assert result["accuracy_by_instance"][0] < 0.35  # a first presentation gets a stored image's label: wrong
    torch.manual_seed(0)
    plain = build_model(tiny_config(**EXTENSIONS, memory_slots=64, memory_width=41)).eval()
    assert np.mean(evaluate(plain, bank, cfg.episodes, episodes=40, seed=3)["accuracy_by_instance"][1:]) < 0.5


def test_the_start_is_the_literal_nearest_neighbour():
    """The answer at each step equals a literal cosine nearest neighbour over the (image, label) pairs of the
    steps before it, on the memory's own view of the features (tanh of the gain times them)."""
    from fewshot_mann.models import memory_init

    torch.manual_seed(1)
    cfg = features_config()
    model = build_model(cfg).eval()
    bank = synthetic_bank(classes=10, per_class=12, size=6, seed=4)
    rng = np.random.default_rng(0)
    classes = rng.choice(10, 5, replace=False)
    order = rng.permutation(np.repeat(np.arange(5), 6))
    images = torch.stack([torch.from_numpy(bank.images[bank.offsets[classes[c]] + i % 12]).float() / 255
                          for i, c in enumerate(order)])[None]
    labels = torch.nn.functional.one_hot(torch.as_tensor(order), 5).float()
    label_in = torch.cat([torch.zeros(1, 5), labels[:-1]])[None]
    answers = model(images, label_in)[0].argmax(-1)
    view = torch.tanh(memory_init.FEATURE_GAIN * images[0].flatten(1))
    view = torch.nn.functional.normalize(view, dim=-1)
    checked = 0
    for t in range(1, len(order)):
        if order[t] in order[:t]:
            nearest = int((view[:t] @ view[t]).argmax())
            assert int(answers[t]) == int(order[nearest]), t
            checked += 1
    assert checked >= 20


def test_memory_init_features_needs_its_extensions_and_a_row_for_features_and_label():
    cfg = tiny_config(memory_init="features")
    with pytest.raises(UserError, match="--memory-init features needs"):
        cfg.validate()
    cfg = features_config(key_strength=False)
    with pytest.raises(UserError, match="no --no-key-strength"):
        cfg.validate()
    cfg = features_config(memory_width=20)
    cfg.validate()
    with pytest.raises(UserError, match="--memory-width must be at least 41"):
        build_model(cfg)


def test_the_start_reads_at_the_chosen_key_strength():
    """The strength layer's bias is softplus's inverse of BETA - 1 (computed where expm1 does not overflow float32):
    every head reads at strength BETA whatever the step."""
    from fewshot_mann.models import memory_init

    model = build_model(features_config())
    beta = 1 + torch.nn.functional.softplus(model.memory.strength.bias)
    assert torch.isfinite(model.memory.strength.bias).all()
    assert torch.allclose(beta, torch.full_like(beta, memory_init.BETA), rtol=1e-4)


@pytest.mark.parametrize("backend", ["autograd", "sequence"])
def test_meta_training_starts_from_it_with_finite_gradients(backend):
    """The start trains: every weight the memory's read and write depend on gets a finite gradient on both backends,
    and the two backends agree on it (the sequence backend's hand-written backward at strength 200). In float64: at
    strength 200 float32 rounding alone moves some gradients by more than the tolerance on some CPUs."""
    torch.manual_seed(2)
    model = build_model(features_config()).double()
    images = torch.rand(2, 12, 1, 6, 6, dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 12)), 5).double()
    grads = {}
    for name in ("autograd", backend):
        model.zero_grad()
        model.memory_backend = name
        model(images, labels).logsumexp(-1).sum().backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for n in ("memory.key.weight", "memory.content.weight", "memory.strength.bias", "output.weight"):
        assert torch.isfinite(grads[backend][n]).all() and grads[backend][n].abs().sum() > 0, n
        assert torch.allclose(grads[backend][n], grads["autograd"][n], rtol=1e-7, atol=1e-10), n
