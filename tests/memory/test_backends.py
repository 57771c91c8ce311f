"""Every memory backend (memory/backend.py) of every memory (LRUA, NTM, DNC) against the
literal reference: logits and the gradient of every parameter, float64 and float32, with
``check_paths_agree`` of tests/memory/test_fast.py. The reference is ``lrua/reference.py``'s whole
forward for LRUA and the model's own step loop with the memory's literal step
(``ntm/reference.py``, ``dnc/reference.py``) for the others. An implementation a memory lacks
falls back (kernel -> sequence -> autograd), and is held to the reference all the same; the
LRUA kernel case skips where the kernel cannot be built."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from fewshot_mann.config import MEMORY_BACKENDS
from fewshot_mann.memory import backend
from fewshot_mann.memory.dnc.reference import literal_dnc_step
from fewshot_mann.memory.ntm.reference import literal_ntm_step
from helpers.lineage import mann_forward_with_step
from helpers.lrua import check_paths_agree, make, reference_path, with_attrs

LITERAL_STEPS = {"ntm": literal_ntm_step, "dnc": literal_dnc_step}

def short(cfg):
    """An episode of 15 steps (5-way, 3 instances): long enough for every slot to be written."""
    cfg.episodes.instances = 3
    return cfg


CONFIGS = {
    "lrua": lambda: short(tiny_config(key_strength=True)),
    "ntm": lambda: short(tiny_config(model="ntm")),
    "ntm, 2 write heads": lambda: short(tiny_config(model="ntm", num_write_heads=2)),
    "dnc": lambda: short(tiny_config(model="dnc")),
}


def literal_path(cfg):
    if cfg.model.model == "mann":
        return reference_path
    step = LITERAL_STEPS[cfg.model.model]
    return lambda model: lambda x, y: mann_forward_with_step(model, step, x, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", MEMORY_BACKENDS)
@pytest.mark.parametrize("memory", list(CONFIGS))
def test_every_backend_of_every_memory_matches_the_literal_reference(memory, name, dtype, monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    cfg = CONFIGS[memory]()
    model = make(cfg, dtype)
    chosen = backend.choose(name, model.memory, torch.zeros(1, dtype=dtype))
    if memory == "lrua" and name == "kernel" and chosen != "kernel":
        pytest.skip(f"the C++ LRUA kernel cannot be built or loaded here: {backend.kernel_unavailable_reason()}")
    expected = {"autograd": "autograd", "sequence": "sequence", "kernel": "kernel"}.get(name)
    if memory == "lrua":
        assert chosen == (expected or chosen) and chosen in model.memory.implementations
    else:
        assert chosen == ("autograd" if name == "autograd" or "2 write" in memory else "sequence")
    check_paths_agree(cfg, dtype, batch=3, paths=[(f"{memory} {name} ({chosen})", with_attrs(memory_backend=name)),
                                                  ("literal reference", literal_path(cfg))])


def test_auto_is_the_kernel_on_cpu_else_the_sequence_path(monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    lrua = make(tiny_config(), torch.float32).memory
    cpu = torch.zeros(1)
    expected = "kernel" if backend.kernel_unavailable_reason() is None else "sequence"
    assert backend.choose("auto", lrua, cpu) == expected
    assert backend.choose("auto", lrua, cpu.to(torch.bfloat16)) == "sequence"  # not a kernel dtype
    assert backend.choose("kernel", lrua, torch.zeros(1, device="meta")) == "sequence"  # not a CPU tensor
    monkeypatch.setenv(backend.ENV, "0")
    assert backend.choose("auto", lrua, cpu) == "sequence"
    assert backend.kernel_unavailable_reason() == "turned off by FEWSHOT_MANN_CPP=0"
    with pytest.raises(Exception, match="--memory-backend must be one of auto, autograd, sequence, kernel"):
        backend.choose("fast", lrua, cpu)


def test_the_memory_backend_is_a_config_field_and_a_flag():
    from fewshot_mann.cli.train import config_from_args, parse_train_args
    from fewshot_mann.config import Config

    assert Config().model.memory_backend == "auto"
    cfg = config_from_args(parse_train_args(["--memory-backend", "autograd", "--out", "x"]))
    assert cfg.model.memory_backend == "autograd"
    assert make(cfg, torch.float32).memory_backend == "autograd"
