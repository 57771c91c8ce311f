"""Where the 2nd presentations of a class go wrong: held-out accuracy at the 2nd instance by
the step it falls on and by the gap since the class's 1st presentation, per checkpoint.

Uses ``evaluation.instance_breakdown`` on ``evaluate``'s episodes (seed 0, the first
``episodes``), free decoding (the paper's protocol) and answers restricted to the labels
shown so far (``decode="seen"``). The markdown goes to ``second_instance.md``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

STEP_BINS = ((1, 4), (5, 9), (10, 19), (20, 49), (50, 149))
GAP_BINS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 149))


def binned(values: np.ndarray, ok: np.ndarray, bins) -> list[str]:
    """``accuracy (count)`` of the items whose value falls in each [lo, hi] bin; ``–`` for none."""
    cells = []
    for lo, hi in bins:
        m = (values >= lo) & (values <= hi)
        cells.append(f"{100 * ok[m].mean():.1f} ({m.sum()})" if m.any() else "–")
    return cells


def header(episodes: int, command: str) -> list[str]:
    head = "| checkpoint | decode | all | " + " | ".join(f"step {lo}–{hi}" for lo, hi in STEP_BINS) + " | " \
        + " | ".join(f"gap {lo}" if lo == hi else f"gap {lo}–{hi}" for lo, hi in GAP_BINS) \
        + " | free answer is an episode label |"
    return [f"Held-out accuracy (%) at the 2nd presentation of a class (count in brackets), {episodes} "
            f"episodes of `evaluate.py` (seed 0), {time.strftime('%Y-%m-%d')}, `{command}`.\n",
            head, "|---|---|---|" + "---|" * (len(STEP_BINS) + len(GAP_BINS) + 1)]


def checkpoint_rows(path: str, data_root: str | None, episodes: int) -> list[str]:
    """The free- and seen-decoding rows of one checkpoint, on its own held-out classes."""
    from fewshot_mann.engine.loading import load_banks
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
    from fewshot_mann.engine.evaluation import instance_breakdown

    ckpt = load_checkpoint(path)
    cfg = ckpt["config_obj"]
    if data_root:
        cfg.data.data_root = data_root
    model = load_model_from_checkpoint(ckpt)
    _, bank = load_banks(cfg, progress=False)
    rows = []
    for decode in ("free", "seen"):
        got = instance_breakdown(model, bank, cfg.episodes, instance=2, episodes=episodes, decode=decode)
        ok = got["correct"]
        rows.append(f"| {Path(path).stem} ({cfg.episodes.ways}-way {cfg.episodes.labels}) | {decode} | "
                    f"{100 * ok.mean():.1f} | " + " | ".join(binned(got["step"], ok, STEP_BINS)) + " | "
                    + " | ".join(binned(got["gap"], ok, GAP_BINS)) + " | "
                    + f"{100 * got['free_answer_is_episode_label'].mean():.1f} |")
    return rows


def second_instance_markdown(checkpoints: list[str], data_root: str | None, episodes: int, command: str) -> str:
    """The whole report: a sentence saying how it was made, then two rows per checkpoint."""
    lines = header(episodes, command)
    for path in checkpoints:
        lines += checkpoint_rows(path, data_root, episodes)
    return "\n".join(lines) + "\n"
