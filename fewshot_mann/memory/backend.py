"""Which implementation of a memory runs: the one place that decides.

Every memory computes the same mathematics in up to three ways (``memory/base.py``):

- ``autograd``: the readable equations of its ``equations.py``, step by step, through
  autograd (the slowest; a second reference);
- ``sequence``: the hand-written backward of its ``sequence.py`` (LRUA: the whole
  recurrence, controller included, as one autograd Function; NTM with one write head and
  DNC: one step as an autograd Function);
- ``kernel``: LRUA only, the same recurrence as a C++ kernel (``lrua/kernel.py``,
  ``lrua.cpp``), CPU, float32 and float64; elsewhere, or where it cannot be built (one
  warning), ``sequence`` runs.

``auto`` (the default, ``ModelConfig.memory_backend``) picks the fastest that can run:
the kernel for LRUA on CPU where it builds, else ``sequence`` where the memory has one,
else ``autograd``. ``FEWSHOT_MANN_CPP=0`` in the environment makes ``auto`` skip the
kernel (the same as asking for ``sequence``) without trying to build it.

``MANN`` asks ``choose`` once per forward and runs ``sequence_function`` (LRUA's whole
recurrence) or, for a step-by-step memory, ``step_function``. Tests and the bench set
``model.memory_backend`` (or the config field) to pick one.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from fewshot_mann.config import MEMORY_BACKENDS
from fewshot_mann.errors import UserError
from fewshot_mann.memory.base import Memory
from fewshot_mann.memory.dnc import sequence as dnc_sequence
from fewshot_mann.memory.dnc.equations import DNCMemory
from fewshot_mann.memory.lrua import kernel
from fewshot_mann.memory.lrua import sequence as lrua_sequence
from fewshot_mann.memory.lrua.equations import LRUAMemory
from fewshot_mann.memory.ntm import sequence as ntm_sequence
from fewshot_mann.memory.ntm.equations import NTMMemory

ENV = "FEWSHOT_MANN_CPP"  # 0/off/false/no: ``auto`` never uses (or builds) the C++ kernel
IMPLEMENTATIONS = tuple(name for name in MEMORY_BACKENDS if name != "auto")  # autograd, sequence, kernel

# The step-by-step memories' hand-written steps: memory_step(memory, h, state) -> (reads, state).
SEQUENCE_STEPS: dict[type, Callable] = {NTMMemory: ntm_sequence.memory_step, DNCMemory: dnc_sequence.memory_step}


def kernel_disabled_by_env() -> bool:
    """True when ``FEWSHOT_MANN_CPP`` is 0/off/false/no."""
    return os.environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no")


def kernel_unavailable_reason() -> str | None:
    """Why ``auto`` cannot use the C++ kernel here (after trying to build or load it), or None."""
    if kernel_disabled_by_env():
        return f"turned off by {ENV}=0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kernel.unavailable_reason()


def check_name(name: str) -> str:
    if name not in MEMORY_BACKENDS:
        raise UserError(f"--memory-backend must be one of {', '.join(MEMORY_BACKENDS)} (got {name!r})")
    return name


def choose(name: str, memory: Memory, like: torch.Tensor) -> str:
    """The implementation that runs for ``name`` (a ``MEMORY_BACKENDS`` entry) on ``memory``
    with tensors like ``like``: ``autograd``, ``sequence`` or ``kernel``.

    An implementation the memory lacks falls back to the next slower one it has (kernel ->
    sequence -> autograd); ``kernel`` on a device or dtype the kernel does not handle, or
    where it cannot be built, runs ``sequence``.
    """
    have = memory.implementations
    if check_name(name) == "auto":
        if "kernel" in have and not kernel_disabled_by_env() and kernel.usable(like):
            return "kernel"
        name = "sequence"
    if name == "kernel" and ("kernel" not in have or not kernel.usable(like)):
        name = "sequence"
    if name == "sequence" and "sequence" not in have:
        name = "autograd"
    return name


def sequence_function(memory: Memory, implementation: str) -> Callable | None:
    """For LRUA under ``sequence`` or ``kernel``: the whole-recurrence function
    (``lrua_sequence`` or ``cpp_lrua_sequence``, one signature); else None (the memory runs
    step by step)."""
    if not isinstance(memory, LRUAMemory) or implementation == "autograd":
        return None
    return kernel.cpp_lrua_sequence if implementation == "kernel" else lrua_sequence.lrua_sequence


def step_function(memory: Memory, implementation: str) -> Callable:
    """``step(h, state) -> (reads, new state)`` of ``memory`` under ``implementation``."""
    if implementation == "sequence" and type(memory) in SEQUENCE_STEPS:
        fn = SEQUENCE_STEPS[type(memory)]
        return lambda h, state: fn(memory, h, state)
    return memory.step
