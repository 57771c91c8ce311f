"""Standard N-way K-shot accuracy for a sequence model, comparable with other few-shot methods.

Protocol (what "1-shot" and "5-shot" mean for a MANN): an episode draws N held-out
classes and K+1 images of each. The N*K support images are presented as a
label-shifted sequence in shuffled order (every class exactly K times, labels
shuffled); then each of the N query images (one per class) is appended as the next
step, in its own copy of the sequence, so no query is ever written into the memory
that answers another. The answer is the model's prediction at the query step, i.e.
after K labelled presentations of every class. Episode i is a pure function of
(seed, i); accuracy is the mean over queries, with a 95% CI over episodes.

``fewshot-mann kshot --checkpoint C --ways 5 --shots 1 5 [--episodes 1000] [--json PATH]``
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from .bank import ClassBank
from .config import EpisodeConfig
from .episodes import Episodes, check_bank, evaluation_episodes, to_tensors, with_ways
from .errors import UserError
from .evaluation import correct_steps, summarise


def support_query_episodes(bank: ClassBank, cfg: EpisodeConfig, shots: int, seed: int, start: int,
                           count: int) -> Episodes:
    """(count * ways) sequences of length ways*shots + 1: the support set, then one query.

    Row e*ways + q is episode e's support sequence followed by the query of label q.
    """
    drawn = evaluation_episodes(bank, dataclasses.replace(cfg, instances=shots + 1), seed, start, count)
    steps = cfg.ways * shots
    images, labels, instance, digits, classes = [], [], [], [], []
    for e in range(count):
        support = np.flatnonzero(drawn.instance[e] < shots)
        queries = np.flatnonzero(drawn.instance[e] == shots)
        queries = queries[np.argsort(drawn.labels[e, queries])]  # query of label 0, 1, ...
        for q in queries:
            order = np.concatenate([support, [q]])
            images.append(drawn.images[e, order])
            labels.append(drawn.labels[e, order])
            instance.append(np.minimum(drawn.instance[e, order], shots))
            digits.append(drawn.label_digits[e])
            classes.append(drawn.classes[e])
    assert all(len(l) == steps + 1 for l in labels)
    return Episodes(np.stack(images), np.stack(labels), np.stack(instance), np.stack(digits), np.stack(classes))


@torch.inference_mode()
def kshot_accuracy(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, shots: int,
                   episodes: int = 1000, seed: int = 0, batch_episodes: int = 50, device="cpu") -> dict:
    """N-way ``shots``-shot accuracy (mean over queries) and its 95% CI over episodes."""
    model.eval()
    per_episode = []
    for first in range(0, episodes, batch_episodes):
        count = min(batch_episodes, episodes - first)
        seq = support_query_episodes(bank, cfg, shots, seed, first, count)
        tb = to_tensors(seq, cfg, device)
        logits = model(tb.images, tb.label_inputs)
        correct = correct_steps(logits[:, -1:], tb.targets[:, -1:], cfg)[:, 0]
        per_episode.append(correct.double().view(count, cfg.ways).mean(1).cpu().numpy())
    acc = np.concatenate(per_episode)[:, None]
    mean, ci = summarise(acc)
    return {"ways": cfg.ways, "shots": shots, "accuracy": mean[0], "ci95": ci[0], "episodes": episodes,
            "seed": seed, "labels": cfg.labels}


def _main(argv) -> int:
    from .checkpoint import load_checkpoint, load_model_from_checkpoint, warn_nonfinite
    from .cli import add_shared_flags, parse_checked, set_threads
    from .datasets import load_split_banks
    from .fileio import atomic_write_json
    from .heldout import bank_digests, check_scored, recorded_classes
    from .training import resolve_device

    p = argparse.ArgumentParser(prog="fewshot-mann kshot", description="Standard N-way K-shot accuracy (see module doc).")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--ways", type=int, nargs="+", default=None, help="default: the checkpoint's ways")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=1000)
    add_shared_flags(p, "seed", "device", "threads")
    p.add_argument("--json", default=None)
    p.add_argument("--allow-trained-classes", action="store_true",
                   help="score the test classes even where the checkpoint records training on some of them")
    args = parse_checked(p, argv)
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1 (got {args.episodes})")
    if min(args.shots) < 1:
        raise UserError(f"--shots must be at least 1 (got {min(args.shots)})")
    set_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config_obj"]
    if args.data_root:
        cfg.data.data_root = args.data_root
    device = resolve_device(args.device)
    model = load_model_from_checkpoint(ckpt, device)
    warn_nonfinite(ckpt, args.checkpoint)
    recorded = recorded_classes(ckpt)
    parts = load_split_banks(cfg, progress=False, recorded=recorded)
    test_bank = parts.test
    check_scored(ckpt, test_bank, "test", allow=args.allow_trained_classes, digests=bank_digests(parts, test_bank))
    rows = []
    for ways in args.ways or [cfg.episodes.ways]:
        ep_cfg = with_ways(cfg.episodes, ways)
        for shots in args.shots:
            check_bank(test_bank, dataclasses.replace(ep_cfg, instances=shots + 1), "held-out classes")
            t0 = time.perf_counter()
            res = kshot_accuracy(model, test_bank, ep_cfg, shots, args.episodes, args.seed, device=device)
            res["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(res)
            print(f"{ways}-way {shots}-shot: {100 * res['accuracy']:.1f} ± {100 * res['ci95']:.1f} % "
                  f"({args.episodes} episodes, seed {args.seed})")
    if args.json:
        atomic_write_json(args.json, {"results": rows, "classes": "test", "class_names": list(test_bank.names),
                                      "checkpoint": args.checkpoint,
                                      "command": ["fewshot-mann", "kshot", *argv], "config": cfg.to_dict(),
                                      "training": {"episodes": ckpt.get("episodes_done")},
                                      "date": time.strftime("%Y-%m-%d")})
    return 0


def main(argv=None) -> int:
    from .cli import run_guarded
    return run_guarded(_main, sys.argv[1:] if argv is None else argv)
