"""Reading a training run's ``metrics.jsonl`` (see ``engine.trainer``) for reports."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path) -> list[dict]:
    """Every JSON line of a run's log; a line that does not parse is skipped."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a torn last line never stops a report
    return lines
