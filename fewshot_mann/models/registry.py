"""``--model`` names -> model factories, in one place (as timm's ``register_model``).

``build_model(cfg)`` builds the model ``cfg.model.model`` names; ``list_models()`` the
names known; ``register_model(name)`` adds a factory ``(cfg) -> nn.Module``. ``ntm`` and
``dnc`` are the MANN controller with another memory (``mann.build_memory`` picks it).
Every model: ``model(images (B,T,C,H,W), label_inputs (B,T,L)) -> logits (B,T,L)``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from fewshot_mann.config import Config
from fewshot_mann.models.baselines import FeedForward, LSTMBaseline
from fewshot_mann.models.keyed import KeyedMemory
from fewshot_mann.models.mann import MANN
from fewshot_mann.models.transformer import TransformerBaseline

_FACTORIES: dict[str, Callable[[Config], nn.Module]] = {}


def register_model(name: str, factory: Callable[[Config], nn.Module] | None = None):
    """Register ``factory`` under ``name``; without ``factory``, a decorator."""
    def add(fn):
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered already")
        _FACTORIES[name] = fn
        return fn
    return add(factory) if factory is not None else add


for _name, _factory in (("mann", MANN), ("ntm", MANN), ("dnc", MANN), ("lstm", LSTMBaseline), ("ff", FeedForward),
                        ("transformer", TransformerBaseline), ("keyed", KeyedMemory)):
    register_model(_name, _factory)


def list_models() -> list[str]:
    return list(_FACTORIES)


def build_model(cfg: Config) -> nn.Module:
    return _FACTORIES[cfg.model.model](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
