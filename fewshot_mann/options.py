"""One declaration per option: a config field with its flag, help and bounds.

Every config field is declared once, with ``option(...)``: its default, and as metadata the
train flag that sets it, the flag's help, its bounds or choices. ``cli/train.py`` builds the
train parser from this metadata (one argument group per section), ``Config.validate`` checks
the bounds and choices from it (rules between fields stay in ``validate``), and ``-c`` config
files are read through it.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field

from fewshot_mann import limits


def kind_of(annotation) -> tuple[type, bool]:
    """(bool | int | float | str, optional) of a dataclass field annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    return base, optional


def option(default=None, *, help: str | None = None, flag: str | bool | None = None, aliases: tuple[str, ...] = (),
           choices: tuple | None = None, low=None, high=None, low_open: bool = False, high_open: bool = False,
           bounds: str | None = None, note: str | None = None, problem=None, negatable: bool = True,
           limit: int | None = None):
    """A dataclass field with its command-line and validation metadata.

    ``flag``: the train flag (default ``--field-name``; False: no flag, set by the program).
    ``aliases``: deprecated spellings of the flag (a one-line notice when used).
    ``choices``: the allowed values (a str field's flag also gets argparse ``choices``).
    ``low``/``high`` (``*_open``: excluded): bounds; ``bounds`` overrides their wording in the
    error ("must be {bounds}"), ``note`` is added after the value ("0 = never").
    ``problem``: ``value -> message | None``, a rule shared with other commands (device, seed).
    ``negatable``: a bool flag gets ``--no-X`` too (argparse.BooleanOptionalAction); else store_true.
    ``limit``: an integer's upper bound against absurd values (``limits``), checked after the others.
    """
    meta = {"help": help, "flag": flag, "aliases": aliases, "choices": choices, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "bounds": bounds, "note": note, "problem": problem,
            "negatable": negatable, "limit": limit}
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str | None:
    """The train flag of config field ``f`` (None: the field has none)."""
    flag = f.metadata.get("flag")
    if flag is False:
        return None
    return flag or "--" + f.name.replace("_", "-")


def dest_of(flag: str) -> str:
    """argparse's attribute name for ``flag``: --read-heads -> read_heads."""
    return flag.lstrip("-").replace("-", "_")


def _bounds_text(meta) -> str:
    if meta["bounds"]:
        return meta["bounds"]
    low, high = meta["low"], meta["high"]
    if high is None or high == math.inf:
        if meta["low_open"]:
            return f"> {low}"
        return f"at least {low}" if low >= 1 else f">= {low}"
    if low is None:
        return f"below {high}" if meta["high_open"] else f"at most {high}"
    return f"in {'(' if meta['low_open'] else '['}{low}, {high}{')' if meta['high_open'] else ']'}"


def field_problem(f: dataclasses.Field, value) -> str | None:
    """The one-line message if ``value`` breaks field ``f``'s own bounds or choices, else None."""
    meta = f.metadata
    name = flag_of(f) or f.name
    if meta.get("problem"):
        return meta["problem"](value)
    if value is None:
        return None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        if all(isinstance(c, str) for c in choices):
            return f"{name} must be one of {', '.join(choices)} (got {value!r})"
        return f"{name} must be {' or '.join(map(str, choices))} (got {value})"
    low, high = meta.get("low"), meta.get("high")
    ok = low is None or (value > low if meta["low_open"] else value >= low)
    ok = ok and (high is None or (value < high if meta["high_open"] else value <= high))
    if not ok:
        note = f"; {meta['note']}" if meta.get("note") else ""
        return f"{name} must be {_bounds_text(meta)} (got {value}{note})"
    limit = meta.get("limit")
    if limit is not None and value > limit:
        return f"{name} must be at most {limit:,} (got {limits.shown(value)})"
    return None
