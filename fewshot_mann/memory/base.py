"""What every external memory implements, and the constants they share.

A memory is an ``nn.Module`` that the MANN controller (``models.mann.MANN``) drives one
step at a time:

- ``initial_state(batch, device, dtype)`` -> state, a tuple of tensors whose last entry is
  the reads ``(batch, read_size)``; the memory is created fresh for every episode and
  never outlives it.
- ``step(h, state)`` -> ``(reads, new_state)``: the memory's equations as readable
  autograd code (its ``equations.py``), with ``h: (batch, controller_size)`` the
  controller output of this step and ``reads: (batch, read_size)`` the concatenated
  reads, fed back to the controller at the next step and to the output layer now.
- ``read_size``: the width of the reads.
- ``implementations``: the names (``memory.backend``) this memory can run as: always
  ``autograd`` (``step``), and where it has one a hand-written ``sequence`` path (and,
  for LRUA, the C++ ``kernel``).

Every memory's package holds the same roles: ``equations.py`` (the module and the
paper's equations), ``reference.py`` (a literal oracle, tests and the bench only),
``sequence.py`` (the same maths with a hand-written backward), and for LRUA
``kernel.py`` + ``lrua.cpp``.
"""
from __future__ import annotations

import torch
from torch import nn

COSINE_EPS = 1e-8  # floor under the norms of cosine similarity
MEMORY_INIT = 1e-6  # initial value of every memory entry: cosine similarity is undefined for zero rows


class Memory(nn.Module):
    """The interface above; subclasses implement ``initial_state``, ``step`` and ``read_size``."""

    implementations: tuple[str, ...] = ("autograd",)

    @property
    def read_size(self) -> int:
        raise NotImplementedError

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> tuple:
        raise NotImplementedError

    def step(self, h: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        raise NotImplementedError
