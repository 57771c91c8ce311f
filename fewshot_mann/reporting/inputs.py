"""What ``fewshot-mann report`` reads, read as every other input is: only regular files, only up
to a size (``fileio.read_regular_file``: a FIFO never hangs, ``/dev/zero`` is never read), JSON
nested at most ``fileio.MAX_JSON_DEPTH`` levels, and every value the reports use checked for its
type before use. A file that fails is one line naming it and the field (``UserError``); a
metrics log line that fails is skipped (a torn last line never stops a report)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from fewshot_mann.errors import UserError
from fewshot_mann.fileio import InputError, parse_json, read_json_file, read_regular_file

MAX_LOG_BYTES = 256 * 2**20  # a metrics.jsonl: a line per few hundred episodes, a few MB for a long run
MAX_LIST = 1_000_000  # items of a list in a result (instances of an episode, k-shot rows)


def read_json(path, what: str = "JSON file"):
    """A JSON file within the bounds (``fileio.read_json_file``); ``UserError`` (one line) otherwise."""
    try:
        return read_json_file(path, what)
    except InputError as exc:
        raise UserError(str(exc)) from exc


def read_text(path, what: str = "file") -> str:
    """A text file of at most ``fileio.MAX_JSON_BYTES`` (a report page), one line if not."""
    from fewshot_mann.fileio import MAX_JSON_BYTES
    try:
        return read_regular_file(path, MAX_JSON_BYTES, what).decode("utf-8", "surrogateescape")
    except InputError as exc:
        raise UserError(str(exc)) from exc


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value, path, key) -> list[float]:
    """A list of numbers (``null``, a non-finite number written by ``json_text``, reads as NaN)."""
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(v is None or _is_number(v) for v in value):
        raise UserError(f"{path}: {key} must be a list of numbers")
    return [math.nan if v is None else float(v) for v in value]


def _optional(result: dict, path, key: str, check, label: str) -> None:
    if result.get(key) is not None and not check(result[key]):
        raise UserError(f"{path}: {key} must be {label} or null (got {type(result[key]).__name__})")


def _command(value) -> bool:
    return isinstance(value, str) or isinstance(value, list) and all(isinstance(c, str) for c in value)


def evaluation(data, path) -> dict:
    """An evaluation JSON (``evaluate --json``, ``knn --json``) with the types the reports use."""
    if not isinstance(data, dict):
        raise UserError(f"{path} is not an evaluation JSON (not an object); write one with evaluate.py --json")
    for key in ("accuracy_by_instance", "ci95", "episodes", "ways", "seed"):
        if key not in data:
            raise UserError(f"{path} is not an evaluation JSON (no {key!r}); write one with evaluate.py --json")
    result = dict(data)
    result["accuracy_by_instance"] = _numbers(data["accuracy_by_instance"], path, "accuracy_by_instance")
    result["ci95"] = _numbers(data["ci95"], path, "ci95")
    if len(result["ci95"]) != len(result["accuracy_by_instance"]):
        raise UserError(f"{path}: ci95 and accuracy_by_instance must be as long as each other")
    for key in ("episodes", "ways", "seed"):
        if not _is_int(data[key]):
            raise UserError(f"{path}: {key} must be an integer (got {type(data[key]).__name__})")
    for key in ("instances", "checkpoint_episodes"):
        _optional(result, path, key, _is_int, "an integer")
    for key in ("labels", "split", "date", "decode", "method", "checkpoint", "name"):
        _optional(result, path, key, lambda v: isinstance(v, str), "a string")
    # "classes": the part scored (test | validation | training); before 2026-12-01 the number of classes
    _optional(result, path, "classes", lambda v: isinstance(v, str) or _is_int(v), "a string (or, in older files, an integer)")
    _optional(result, path, "command", _command, "a list of strings")
    _optional(result, path, "config", lambda v: isinstance(v, dict), "an object")
    training = data.get("training")
    if training is not None:
        if not isinstance(training, dict):
            raise UserError(f"{path}: training must be an object or null")
        for key in ("episodes", "episodes_including_init", "train_seconds", "threads"):
            _optional(training, f"{path}: training", key, _is_number, "a number")
        _optional(training, f"{path}: training", "command", _command, "a list of strings")
    return result


def evaluation_file(path) -> dict:
    return evaluation(read_json(path, "evaluation JSON"), path)


def kshot(data, path) -> dict:
    """A ``kshot --json`` file with the types its table uses."""
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or len(rows) > MAX_LIST:
        raise UserError(f"{path} is not a kshot JSON (no list of results); write one with kshot --json")
    for row in rows:
        if not (isinstance(row, dict) and all(_is_int(row.get(k)) for k in ("ways", "shots", "episodes"))
                and all(_is_number(row.get(k)) for k in ("accuracy", "ci95"))):
            raise UserError(f"{path}: each result needs integer ways, shots, episodes and numbers accuracy, ci95")
    _optional(data, path, "command", _command, "a list of strings")
    _optional(data, path, "date", lambda v: isinstance(v, str), "a string")
    return data


def rows(data, path) -> list[dict]:
    """The rows of ``memory_comparison.json``: ``{"rows": [{"name", "eval", "metrics"?}, ...]}``."""
    items = data.get("rows") if isinstance(data, dict) else None
    ok = isinstance(items, list) and all(
        isinstance(r, dict) and isinstance(r.get("name"), str) and r["name"] and isinstance(r.get("eval"), str)
        and r["eval"] and (r.get("metrics") is None or isinstance(r["metrics"], str)) for r in items)
    if not ok:
        raise UserError(f"{path}: expected {{\"rows\": [{{\"name\": ..., \"eval\": PATH, \"metrics\": PATH}}, ...]}}")
    return items


def metrics_lines(path) -> list[dict]:
    """Every JSON object line of a run's ``metrics.jsonl`` (bounded read); other lines are skipped.
    An unreadable log (a FIFO, a device, too large) reads as none, with one warning line."""
    try:
        text = read_regular_file(path, MAX_LOG_BYTES, "metrics log").decode("utf-8", "replace")
    except InputError as exc:
        import sys
        print(f"warning: {exc}; its training numbers are left out", file=sys.stderr)
        return []
    out = []
    for raw in text.splitlines():
        if raw.strip():
            try:
                line = parse_json(raw, "a metrics line")
            except (InputError, json.JSONDecodeError):
                continue
            if isinstance(line, dict):
                out.append(line)
    return out


def config_command(path: Path):
    """The ``command`` of a run's ``config.json`` (None when absent, unreadable or not a command)."""
    try:
        data = read_json_file(path, "run config")
    except InputError:
        return None
    command = data.get("command") if isinstance(data, dict) else None
    return command if _command(command) else None
