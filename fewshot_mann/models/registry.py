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


def parameters_on_meta(cfg: Config) -> int | None:
    """Parameters of ``cfg``'s model, counted on the meta device (nothing is allocated, so a config
    asking for a huge model costs nothing to measure); None where it cannot be built there."""
    import torch

    try:
        with torch.device("meta"):
            return count_parameters(build_model(cfg))
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: its real build decides
        return None


def check_size(cfg: Config, where: str = "") -> int | None:
    """``UserError`` (one line) if ``cfg`` asks for a model of more than ``limits.MAX_PARAMETERS``
    parameters, before anything is allocated; else its parameter count (None: unknown)."""
    from fewshot_mann.errors import UserError
    from fewshot_mann.limits import MAX_PARAMETERS

    n = parameters_on_meta(cfg)
    if n is not None and n > MAX_PARAMETERS:
        raise UserError(f"{where + ': ' if where else ''}the {cfg.model.model} model of this config would have "
                        f"{n:,} parameters, over the limit of {MAX_PARAMETERS:,} (lower --controller-size, "
                        "--memory-width, --memory-slots, --read-heads or --transformer-width)")
    return n
