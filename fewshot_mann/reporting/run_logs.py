"""Reading a training run's ``metrics.jsonl`` (see ``engine.trainer``) for reports."""
from __future__ import annotations

from fewshot_mann.reporting.inputs import metrics_lines


def read_metrics(path) -> list[dict]:
    """Every JSON object line of a run's log (a bounded read); a line that does not parse is skipped."""
    return metrics_lines(path)
