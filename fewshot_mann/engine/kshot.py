"""Standard N-way K-shot accuracy for a sequence model, comparable with other few-shot methods.

Protocol (what "1-shot" and "5-shot" mean for a MANN): an episode (a trial) draws N
held-out classes and K+Q images of each (Q = ``--queries``, default 1). The N*K support
images are presented as a label-shifted sequence in shuffled order (every class exactly K
times, labels shuffled); then each of the N*Q query images is appended as the next step,
in its own copy of the sequence, so no query is ever written into the memory that answers
another. The answer is the model's prediction at the query step, i.e. after K labelled
presentations of every class. Episode i is a pure function of (seed, i); accuracy is the
mean over the episode's queries, with a 95% CI over episodes.

Baselines on the same episodes (the same support and query images): nearest centroid
(Euclidean distance to each class's mean support vector) on raw pixels, and, for a
backbone checkpoint, on the backbone's features as they are and centred + unit length
(the model's own input). JSON ``"baselines"``: rows like ``"results"`` plus ``"name"``.

The cross-domain protocol (CD-FSL), a contract other tools rely on::

    fewshot-mann kshot --checkpoint C --dataset folder --data-root DIR --test-classes all \
        --ways 5 --shots 1 5 --queries 15 --episodes 600 --json OUT

classes with fewer than K + Q images are skipped with a warning. ``--adapt STEPS``
meta-fine-tunes a copy of the model on each trial's support set first (``adapt.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.episodes import Episodes, check_bank, evaluation_episodes, to_tensors, with_ways
from fewshot_mann.errors import UserError
from fewshot_mann.engine.evaluation import correct_steps, summarise


def support_query_episodes(bank: ClassBank, cfg: EpisodeConfig, shots: int, seed: int, start: int,
                           count: int, queries: int = 1) -> Episodes:
    """(count * ways * queries) sequences of length ways*shots + 1: the support set, then one query.

    Rows e*ways*queries ... are episode e's support sequence followed by each of its queries,
    in order of label (then presentation).
    """
    drawn = evaluation_episodes(bank, dataclasses.replace(cfg, instances=shots + queries), seed, start, count)
    steps = cfg.ways * shots
    images, labels, instance, digits, classes = [], [], [], [], []
    for e in range(count):
        support = np.flatnonzero(drawn.instance[e] < shots)
        picked = np.flatnonzero(drawn.instance[e] >= shots)
        picked = picked[np.lexsort((drawn.instance[e, picked], drawn.labels[e, picked]))]
        for q in picked:
            order = np.concatenate([support, [q]])
            images.append(drawn.images[e, order])
            labels.append(drawn.labels[e, order])
            instance.append(np.minimum(drawn.instance[e, order], shots))
            digits.append(drawn.label_digits[e])
            classes.append(drawn.classes[e])
    assert all(len(l) == steps + 1 for l in labels)
    return Episodes(np.stack(images), np.stack(labels), np.stack(instance), np.stack(digits), np.stack(classes))


def kshot_accuracy(model: torch.nn.Module, bank: ClassBank, cfg: EpisodeConfig, shots: int,
                   episodes: int = 1000, seed: int = 0, batch_episodes: int | None = None, device="cpu",
                   queries: int = 1, adapt: int = 0, progress: bool = False) -> dict:
    """N-way ``shots``-shot accuracy (mean over each episode's queries) and its 95% CI over episodes.

    ``adapt`` > 0: each episode is answered by a copy of the model meta-fine-tuned for that
    many steps on its support set (``adapt.adapt_to_support``)."""
    per_row = cfg.ways * queries
    if batch_episodes is None:  # about 1,000 sequences per forward pass
        batch_episodes = 1 if adapt else max(1, 1000 // per_row)
    model.eval()
    per_episode = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=episodes, desc=f"{cfg.ways}-way {shots}-shot", unit="ep", leave=False, file=sys.stderr)
    for first in range(0, episodes, batch_episodes):
        count = min(batch_episodes, episodes - first)
        seq = support_query_episodes(bank, cfg, shots, seed, first, count, queries)
        tb = to_tensors(seq, cfg, device)
        net = model
        if adapt:
            from fewshot_mann.engine.adapt import adapt_to_support
            net = adapt_to_support(model, seq.images[0, :-1], seq.labels[0, :-1], cfg, adapt,
                                   seed=[seed, first])
        with torch.inference_mode():
            logits = net(tb.images, tb.label_inputs)
        correct = correct_steps(logits[:, -1:], tb.targets[:, -1:], cfg)[:, 0]
        per_episode.append(correct.double().view(count, per_row).mean(1).cpu().numpy())
        if bar is not None:
            bar.update(count)
    if bar is not None:
        bar.close()
    acc = np.concatenate(per_episode)[:, None]
    mean, ci = summarise(acc)
    return {"ways": cfg.ways, "shots": shots, "accuracy": mean[0], "ci95": ci[0], "episodes": episodes,
            "queries": queries, "seed": seed, "labels": cfg.labels, **({"adapt": adapt} if adapt else {})}


def _prepare(x: np.ndarray, norm: str) -> np.ndarray:
    """(E, S, ...) -> (E, S, D) float64 vectors for a nearest-centroid baseline."""
    x = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
    if norm == "pixels":
        return x / 255.0
    if norm == "center-l2":
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def nearest_centroid_accuracy(bank: ClassBank, cfg: EpisodeConfig, shots: int, episodes: int, seed: int,
                              queries: int = 1, norm: str = "none", name: str = "nearest-centroid") -> dict:
    """Nearest centroid (Euclidean) on the same episodes as ``kshot_accuracy`` over a bank with
    the same classes and counts: images (pixels) or features. ``norm``: pixels (x / 255), none,
    or center-l2 (centred on the episode's mean, as ``models.FeatureEncoder``, then unit length)."""
    ep_cfg = dataclasses.replace(cfg, instances=shots + queries)
    accs = []
    for first in range(0, episodes, 100):
        count = min(100, episodes - first)
        drawn = evaluation_episodes(bank, ep_cfg, seed, first, count)
        x = _prepare(drawn.images, norm)  # (E, S, D)
        sup = drawn.instance < shots
        for e in range(count):
            xs, ys = x[e, sup[e]], drawn.labels[e, sup[e]]
            xq, yq = x[e, ~sup[e]], drawn.labels[e, ~sup[e]]
            centroids = np.stack([xs[ys == c].mean(0) for c in range(cfg.ways)])
            d = ((xq[:, None, :] - centroids[None]) ** 2).sum(-1)
            accs.append(float((d.argmin(1) == yq).mean()))
    mean, ci = summarise(np.array(accs)[:, None])
    return {"name": name, "ways": cfg.ways, "shots": shots, "accuracy": mean[0], "ci95": ci[0],
            "episodes": episodes, "queries": queries, "seed": seed}


def loo_accuracy(x: np.ndarray, labels: np.ndarray, norm: str = "none") -> float | None:
    """Leave-one-out nearest-centroid accuracy of a labelled set (N, ...) -> fraction, or None
    when no class has two images (nothing to leave out)."""
    v = _prepare(x[None], norm)[0]
    right, total = 0, 0
    classes = np.unique(labels)
    for i in range(len(v)):
        if np.sum(labels == labels[i]) < 2:
            continue
        keep = np.arange(len(v)) != i
        cents = np.stack([v[keep & (labels == c)].mean(0) for c in classes if np.any(keep & (labels == c))])
        names = [c for c in classes if np.any(keep & (labels == c))]
        right += int(names[int(((cents - v[i]) ** 2).sum(-1).argmin())] == labels[i])
        total += 1
    return right / total if total else None


def _main(argv) -> int:
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, warn_nonfinite
    from fewshot_mann.cli.common import add_shared_flags, parse_checked, set_threads
    from fewshot_mann.config import DATASETS, POLARITIES, is_backbone
    from fewshot_mann.data.loading import load_split_banks
    from fewshot_mann.fileio import atomic_write_json
    from fewshot_mann.data.folder import drop_small_classes
    from fewshot_mann.data.heldout import bank_digests, check_scored, recorded_classes
    from fewshot_mann.engine.trainer import resolve_device

    p = argparse.ArgumentParser(prog="fewshot-mann kshot", description="Standard N-way K-shot accuracy (see module doc).")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="override the checkpoint's dataset (folder: cross-domain, every class held out by default)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--test-classes", default=None,
                   help="folder datasets: classes to evaluate on: all, a fraction or a comma list")
    p.add_argument("--polarity", choices=POLARITIES, default=None, help="override the checkpoint's polarity (raw pixels)")
    p.add_argument("--ways", type=int, nargs="+", default=None, help="default: the checkpoint's ways")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--queries", type=int, default=1, help="query images per class in each episode")
    p.add_argument("--episodes", type=int, default=1000)
    add_shared_flags(p, "seed", "device", "threads")
    p.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                   help="meta-fine-tune a copy of the model on each episode's support set for STEPS steps first")
    p.add_argument("--no-baselines", action="store_true", help="skip the nearest-centroid baselines")
    p.add_argument("--no-feature-cache", action="store_true", help="backbone features: neither read nor write the cache")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--allow-trained-classes", action="store_true",
                   help="score the test classes even where the checkpoint records training on some of them")
    args = parse_checked(p, argv)
    if args.episodes < 1 or min(args.shots) < 1 or args.queries < 1:
        raise UserError("--episodes, --shots and --queries must be at least 1")
    if args.adapt < 0:
        raise UserError(f"--adapt must be >= 0 steps (got {args.adapt})")
    set_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config_obj"]
    if args.data_root:
        cfg.data.data_root = args.data_root
    if args.dataset and args.dataset != cfg.data.dataset:
        cfg.data.dataset, cfg.data.test_root, cfg.data.test_classes = args.dataset, None, "all"
    if args.test_classes is not None:
        cfg.data.test_root, cfg.data.test_classes = None, args.test_classes
    if args.polarity:
        cfg.data.polarity = args.polarity
    cfg.episodes.instances = min(cfg.episodes.instances, min(args.shots) + args.queries)  # the loader's minimum
    device = resolve_device(args.device)
    model = load_model_from_checkpoint(ckpt, device)
    warn_nonfinite(ckpt, args.checkpoint)
    recorded = None if (args.dataset or args.test_classes is not None) else recorded_classes(ckpt)
    parts, pixel_parts = load_split_banks(cfg, progress=not args.no_progress, recorded=recorded,
                                          feature_cache=not args.no_feature_cache, with_pixels=True)
    test_bank, test_pixels = parts.test, pixel_parts.test
    check_scored(ckpt, test_bank, "test", allow=args.allow_trained_classes, digests=bank_digests(parts, test_bank))
    rows, baselines = [], []
    backbone = is_backbone(cfg.model.encoder)
    for ways in args.ways or [cfg.episodes.ways]:
        ep_cfg = with_ways(cfg.episodes, ways)
        for shots in args.shots:
            keep = [i for i, n in enumerate(test_bank.counts) if n >= shots + args.queries]
            if len(keep) < test_bank.num_classes:
                drop_small_classes(test_bank, shots + args.queries, f"{shots}-shot {args.queries}-query")
            bank, pixels = test_bank.subset(keep), test_pixels.subset(keep)
            check_bank(bank, dataclasses.replace(ep_cfg, instances=shots + args.queries), "held-out classes")
            t0 = time.perf_counter()
            res = kshot_accuracy(model, bank, ep_cfg, shots, args.episodes, args.seed, device=device,
                                 queries=args.queries, adapt=args.adapt, progress=not args.no_progress)
            res["seconds"] = round(time.perf_counter() - t0, 2)
            res["num_classes"] = bank.num_classes
            rows.append(res)
            print(f"{ways}-way {shots}-shot: {100 * res['accuracy']:.1f} ± {100 * res['ci95']:.1f} % "
                  f"({cfg.model.model}{f', adapt {args.adapt}' if args.adapt else ''}; {args.episodes} episodes, "
                  f"{args.queries} queries per class, {bank.num_classes} classes, seed {args.seed})")
            if args.no_baselines:
                continue
            runs = [("nearest-centroid-raw-pixels", pixels, "pixels")]
            if backbone:
                runs += [("nearest-centroid-features", bank, "none"),
                         ("nearest-centroid-features-center-l2", bank, "center-l2")]
            for name, b, norm in runs:
                base = nearest_centroid_accuracy(b, ep_cfg, shots, args.episodes, args.seed, args.queries, norm, name)
                baselines.append(base)
                print(f"  {name:<38} {100 * base['accuracy']:.1f} ± {100 * base['ci95']:.1f} %")
    if args.json:
        atomic_write_json(args.json, {"results": rows, "baselines": baselines, "classes": "test",
                                      "class_names": list(test_bank.names), "checkpoint": args.checkpoint,
                                      "command": ["fewshot-mann", "kshot", *argv], "config": cfg.to_dict(),
                                      "training": {"episodes": ckpt.get("episodes_done")},
                                      "date": time.strftime("%Y-%m-%d")})
    return 0


def main(argv=None) -> int:
    from fewshot_mann.cli.common import run_guarded
    return run_guarded(_main, sys.argv[1:] if argv is None else argv)
