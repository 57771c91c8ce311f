"""Markdown cells shared by the reports' tables: accuracy ± CI, instance headers, durations, commands."""
from __future__ import annotations

import shlex


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... (up to 20th, as the tables need)."""
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def instance_columns(instances) -> str:
    """``1st | 2nd | ...``: the header cells of one column per instance."""
    return " | ".join(ordinal(i) for i in instances)


def accuracy_cell(result: dict, instance: int) -> str:
    """``acc ± ci`` (%) at a 1-based instance of an evaluation JSON; ``–`` past its episodes."""
    acc, ci = result["accuracy_by_instance"], result["ci95"]
    if instance > len(acc):
        return "–"
    return f"{100 * acc[instance - 1]:.1f} ± {100 * ci[instance - 1]:.1f}"


def hours(seconds) -> str:
    """``1.43 h`` from 10 minutes on, else ``543 s``; ``–`` for none."""
    if not seconds:
        return "–"
    return f"{seconds / 3600:.2f} h" if seconds >= 600 else f"{seconds:.0f} s"


def duration(seconds) -> str:
    """``1.4 h``, ``37.7 min`` or ``90 s``; ``–`` for none."""
    if not seconds:
        return "–"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def command_cell(cmd) -> str:
    """A command line (argv list or string) in backticks; ``–`` for none."""
    if not cmd:
        return "–"
    return "`" + (shlex.join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd)) + "`"
