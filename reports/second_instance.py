"""Where the 2nd presentations of a class go wrong: held-out accuracy at the 2nd instance by
the step it falls on and by the gap since the class's 1st presentation, per checkpoint.

    python reports/second_instance.py --data-root ../shared/datasets/omniglot \
        --out reports/second_instance.md CHECKPOINT [CHECKPOINT ...]

Uses ``evaluation.instance_breakdown`` on ``evaluate.py``'s episodes (seed 0, the first
``--episodes``), free decoding (the paper's protocol) and answers restricted to the labels
shown so far (``--decode seen``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from fewshot_mann.data.loading import load_banks
from fewshot_mann.engine.evaluation import instance_breakdown

STEP_BINS = ((1, 4), (5, 9), (10, 19), (20, 49), (50, 149))
GAP_BINS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 149))


def _binned(values: np.ndarray, ok: np.ndarray, bins) -> list[str]:
    cells = []
    for lo, hi in bins:
        m = (values >= lo) & (values <= hi)
        cells.append(f"{100 * ok[m].mean():.1f} ({m.sum()})" if m.any() else "–")
    return cells


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data-root", default=None)
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the markdown here as well as printing it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = "| checkpoint | decode | all | " + " | ".join(f"step {lo}–{hi}" for lo, hi in STEP_BINS) + " | " \
        + " | ".join(f"gap {lo}" if lo == hi else f"gap {lo}–{hi}" for lo, hi in GAP_BINS) + " | free answer is an episode label |"
    lines = [f"Held-out accuracy (%) at the 2nd presentation of a class (count in brackets), {args.episodes} "
             f"episodes of `evaluate.py` (seed 0), {time.strftime('%Y-%m-%d')}, "
             f"`python reports/second_instance.py {' '.join(sys.argv[1:] if argv is None else argv)}`.\n",
             head, "|---|---|---|" + "---|" * (len(STEP_BINS) + len(GAP_BINS) + 1)]
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        cfg = ckpt["config_obj"]
        if args.data_root:
            cfg.data.data_root = args.data_root
        model = load_model_from_checkpoint(ckpt)
        _, bank = load_banks(cfg, progress=False)
        for decode in ("free", "seen"):
            got = instance_breakdown(model, bank, cfg.episodes, instance=2, episodes=args.episodes, decode=decode)
            ok = got["correct"]
            lines.append(f"| {Path(path).stem} ({cfg.episodes.ways}-way {cfg.episodes.labels}) | {decode} | "
                         f"{100 * ok.mean():.1f} | " + " | ".join(_binned(got["step"], ok, STEP_BINS)) + " | "
                         + " | ".join(_binned(got["gap"], ok, GAP_BINS)) + " | "
                         + f"{100 * got['free_answer_is_episode_label'].mean():.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
