"""How a message names the option that sets the images of a class in an episode.

``train``, ``evaluate``, ``knn`` and ``inspect`` have ``--instances``; ``kshot`` has none: its
episodes need ``--shots`` + ``--queries`` images of a class. The loaders' messages ask here
(``instances_option``, ``lower_instances``), and ``kshot`` runs them inside
``naming_instances(KSHOT)``, so no message tells a kshot user to change a flag kshot lacks."""
from __future__ import annotations

import contextlib
import contextvars

INSTANCES = "--instances"
KSHOT = "--shots + --queries"
_NAME = contextvars.ContextVar("instances_option", default=INSTANCES)


def instances_name() -> str:
    """``--instances``, or in kshot ``--shots + --queries``."""
    return _NAME.get()


def instances_option(n: int) -> str:
    """``--instances 6``, or in kshot ``--shots + --queries = 6``."""
    return f"{INSTANCES} {n}" if _NAME.get() == INSTANCES else f"{_NAME.get()} = {n}"


def lower_instances() -> str:
    """What to lower for fewer images a class: ``--instances``, or in kshot ``--shots or --queries``."""
    return INSTANCES if _NAME.get() == INSTANCES else "--shots or --queries"


@contextlib.contextmanager
def naming_instances(name: str):
    token = _NAME.set(name)
    try:
        yield
    finally:
        _NAME.reset(token)
