"""Vector-store baseline: answer each step by the label of its cosine nearest neighbour
among the earlier labelled steps of the same episode.

It runs on exactly the episodes ``evaluate.py`` uses (``episodes.evaluation_episodes``
with the same seed) through the same ``evaluation.evaluate``, so its JSON has the same
keys (``accuracy_by_instance``, ``ci95``, ``episodes``, ``ways``, ``seed``, ...).

The store is the episode itself, read through the model interface ``(images,
label_inputs) -> logits``: the label of step s arrives as the input of step s+1, so at
step t the store holds steps 0..t-1 with their labels, and nothing later can be used.

- At step t >= 1 the answer is the label of ``argmax_{s<t} cos(f(x_t), f(x_s))`` (ties:
  the earliest step). At the 1st instance of a class the nearest stored example is of
  another class, so the answer is wrong unless the store is empty.
- At step 0 nothing is stored; the answer is symbol 0 in every label group. With
  one-hot labels that is a uniform guess (labels are shuffled per episode: expected
  accuracy 1/ways); with string labels it is almost never a label of the episode.

Features f:

- ``raw``: the image's pixels in [0, 1], flattened (Santoro et al.'s "kNN, raw pixels").
- a checkpoint, ``--layer encoder`` (default): the trained image encoder's output for the
  image alone; needs a ``--encoder conv`` checkpoint (a linear encoder is the raw pixels).
- a checkpoint, ``--layer controller``: the input of the model's output layer at step t,
  run causally over the episode (MANN/NTM/DNC: controller state h_t with reads r_t; LSTM:
  its hidden state; transformer: the last block's output; ff: its last hidden layer).
  It carries the model's own episode context (the previous label, memory reads), so it
  measures how well the model's representation groups classes, not a pure image feature.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from fewshot_mann.cli.common import add_shared_flags
from fewshot_mann.config import DATASETS, LABEL_ENCODINGS, RESIZE_POLICIES, Config
from fewshot_mann.data.heldout import CLASS_CHOICES
from fewshot_mann.errors import UserError

LAYERS = ("encoder", "controller")
COSINE_EPS = 1e-8


def raw_pixels(images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
    """(B,T,C,H,W) -> (B,T,C*H*W)."""
    return images.flatten(2)


class KNNClassifier(nn.Module):
    """Cosine nearest neighbour over the earlier steps of each episode.

    ``embed(images, label_inputs) -> (B, T, D)`` gives the features; it must be causal
    (step t's feature may use inputs up to step t only). ``forward`` returns "logits"
    (B, T, L): the stored label vector of the nearest earlier step (zeros at step 0).
    """

    def __init__(self, embed):
        super().__init__()
        self.embed = embed

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.embed(images, label_inputs).float(), dim=-1, eps=COSINE_EPS)
        steps = feats.shape[1]
        similarity = torch.bmm(feats, feats.transpose(1, 2))  # (B, T query, T stored)
        earlier = torch.ones(steps, steps, dtype=torch.bool, device=feats.device).tril(-1)
        nearest = similarity.masked_fill(~earlier, float("-inf")).argmax(-1)  # (B,T); first max on ties
        # The label of stored step s is the input of step s + 1 <= t.
        labels = label_inputs.gather(1, (nearest + 1).clamp_max(steps - 1).unsqueeze(-1)
                                     .expand(-1, -1, label_inputs.shape[-1]))
        labels[:, 0] = 0.0  # nothing stored yet
        return labels


class CentroidClassifier(nn.Module):
    """Cosine nearest centroid over the earlier steps of each episode (one-hot labels).

    At step t each label seen so far has the mean of its earlier steps' unit-length features
    as centroid; the answer is the label whose centroid is nearest by cosine (labels not yet
    seen never win; at step 0 nothing is stored). ``embed`` as for ``KNNClassifier``.
    Returns "logits" (B, T, L)."""

    def __init__(self, embed):
        super().__init__()
        self.embed = embed

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.embed(images, label_inputs).float(), dim=-1, eps=COSINE_EPS)  # (B, T, D)
        b, steps, labels = label_inputs.shape
        stored = torch.zeros_like(label_inputs, dtype=feats.dtype)
        stored[:, :-1] = label_inputs[:, 1:].to(feats.dtype)  # the label of step s is the input of step s + 1
        # sums[:, t] = sum over s < t of label_s (outer) feature_s: (B, T, L, D)
        outer = stored.unsqueeze(-1) * feats.unsqueeze(2)
        sums = torch.cumsum(outer, dim=1) - outer
        counts = torch.cumsum(stored, dim=1) - stored  # (B, T, L)
        centroids = F.normalize(sums, dim=-1, eps=COSINE_EPS)
        scores = (centroids * feats.unsqueeze(2)).sum(-1)  # (B, T, L)
        return scores.masked_fill(counts == 0, -1e4)


def folder_baselines(cfg, bank, pixel_bank, *, episodes: int, seed: int, batch_size: int, device) -> list[dict]:
    """Nearest centroid on the same episodes as ``evaluate`` (same seed, same class order):
    on raw pixels, and on the backbone's features for a backbone model (one-hot labels only)."""
    from fewshot_mann.config import is_backbone
    from fewshot_mann.engine.evaluation import evaluate

    if cfg.episodes.labels != "onehot":
        return []
    runs = [("nearest-centroid-raw-pixels", pixel_bank)]
    if is_backbone(cfg.model.encoder):
        runs.append(("nearest-centroid-features", bank))
    out = []
    for name, b in runs:
        res = evaluate(CentroidClassifier(raw_pixels), b, cfg.episodes, episodes=episodes, seed=seed,
                       batch_size=batch_size, device=device)
        out.append({"name": name, "accuracy_by_instance": res["accuracy_by_instance"], "ci95": res["ci95"],
                    "accuracy": res["accuracy"], "episodes": res["episodes"]})
    return out


class CheckpointFeatures:
    """Features of a trained model (see the module docstring for the two layers)."""

    def __init__(self, model: nn.Module, layer: str):
        self.model, self.layer = model.eval(), layer
        from fewshot_mann.models.encoders import LinearEncoder

        if layer == "encoder" and isinstance(model.encoder, LinearEncoder):
            raise UserError("--layer encoder: this checkpoint's encoder is linear, i.e. the raw pixels; "
                            "use --features raw, --layer controller, or a checkpoint trained with --encoder conv")

    def __call__(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        if self.layer == "encoder":
            return self.model.encoder(images)
        # Every model but the keyed memory says what its output layer reads, (B, T, D), under
        # whichever implementation runs (MANN: any memory backend).
        features = getattr(self.model, "features", None)
        if features is None:
            raise UserError(f"--layer controller: cannot find per-step features in this {type(self.model).__name__}")
        return features(images, label_inputs)


def knn_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="fewshot-mann knn",
                                description="Nearest-neighbour baseline on the evaluation episodes of evaluate.py.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", default="raw", metavar="raw|CHECKPOINT",
                   help="raw pixels, or a checkpoint.pt whose trained features to use (its data config is used)")
    p.add_argument("--layer", choices=LAYERS, default="encoder",
                   help="with a checkpoint: the conv encoder output, or the input of the output layer")
    p.add_argument("--dataset", choices=DATASETS, default=None, help=f"default: {d.data.dataset} or the checkpoint's")
    p.add_argument("--data-root", default=None, help="Omniglot root or image folder (default as train.py)")
    p.add_argument("--class-split", default=None, help=f"Omniglot class split (default: {d.data.split})")
    p.add_argument("--image-size", type=int, default=None, help=f"default: {d.data.image_size} or the checkpoint's")
    p.add_argument("--channels", type=int, default=None, help="folder datasets: 1 or 3")
    p.add_argument("--test-root", default=None, help="folder datasets: a separate folder of held-out classes")
    p.add_argument("--test-classes", default=None, help="folder datasets: held-out fraction or comma list")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default=None, help="folder datasets: pad, crop or stretch")
    p.add_argument("--ways", type=int, default=None, help=f"default: {d.episodes.ways} or the checkpoint's")
    p.add_argument("--instances", type=int, default=None, help=f"default: {d.episodes.instances} or the checkpoint's")
    p.add_argument("--labels", choices=LABEL_ENCODINGS, default=None, help="default: onehot or the checkpoint's")
    p.add_argument("--classes", default=None, choices=CLASS_CHOICES,
                   help="which classes to score: test (= held-out; the default), validation, or training")
    p.add_argument("--split", default=None, choices=("test", "train"), help=argparse.SUPPRESS)  # deprecated: --classes
    p.add_argument("--split-seed", type=int, default=None,
                   help="--features raw on a folder: the seed that chose the held-out classes (use the --seed the "
                        "model you compare with was trained with; default: the checkpoint's, else --seed)")
    p.add_argument("--allow-trained-classes", action="store_true",
                   help="score test classes even where the checkpoint records training on some of them")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    add_shared_flags(p, "seed", "device", "threads", seed_help="episode seed (evaluate.py's --seed)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON (evaluate.py's keys)")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG of accuracy by instance")
    p.add_argument("--no-progress", action="store_true")
    return p


def _apply_overrides(cfg: Config, args) -> Config:
    overrides = {("data", "dataset"): args.dataset, ("data", "data_root"): args.data_root,
                 ("data", "split"): args.class_split, ("data", "image_size"): args.image_size,
                 ("data", "channels"): args.channels, ("data", "test_root"): args.test_root,
                 ("data", "test_classes"): args.test_classes, ("data", "resize"): args.resize,
                 ("episodes", "ways"): args.ways, ("episodes", "instances"): args.instances,
                 ("episodes", "labels"): args.labels}
    for (section, name), value in overrides.items():
        if value is not None:
            setattr(getattr(cfg, section), name, value)
    cfg.validate()
    return cfg


def main(argv=None) -> int:
    from fewshot_mann.cli.common import run_guarded
    return run_guarded(_knn, sys.argv[1:] if argv is None else list(argv))


def _knn(argv) -> int:
    from fewshot_mann.data import loading as datasets
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, warn_nonfinite
    from fewshot_mann.cli.common import parse_checked, set_threads
    from fewshot_mann.data.episodes import check_bank
    from fewshot_mann.cli.common import classes_option
    from fewshot_mann.engine.evaluation import evaluate, format_table
    from fewshot_mann.data.heldout import bank_digests, check_scored, recorded_classes
    from fewshot_mann.reporting.records import training_record, write_evaluation
    from fewshot_mann.engine.trainer import resolve_device

    args = parse_checked(knn_parser(), argv)
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1 (got {args.episodes})")
    set_threads(args.threads)
    device = resolve_device(args.device)
    ckpt = None
    kind = classes_option(args)
    if args.features == "raw":
        cfg = _apply_overrides(Config(), args)
        cfg.train.seed = args.seed if args.split_seed is None else args.split_seed  # the folder's class split
        embed, what = raw_pixels, "raw pixels"
    else:
        ckpt = load_checkpoint(args.features)
        cfg = ckpt["config_obj"]
        trained_episodes = (cfg.episodes.ways, cfg.episodes.labels)
        if args.dataset and args.dataset != cfg.data.dataset:
            cfg.data.test_root, cfg.data.test_classes = None, "all"  # cross-domain, as evaluate.py
        cfg = _apply_overrides(cfg, args)
        if args.layer == "controller" and (cfg.episodes.ways, cfg.episodes.labels) != trained_episodes:
            raise UserError(f"--layer controller runs the trained model, which reads {trained_episodes[0]}-way "
                            f"{trained_episodes[1]} labels; drop --ways/--labels or use --layer encoder")
        embed = CheckpointFeatures(load_model_from_checkpoint(ckpt, device), args.layer)
        warn_nonfinite(ckpt, args.features)
        what = f"{args.layer} features of {args.features}"
    if ckpt is not None and args.split_seed is not None:
        cfg.train.seed = args.split_seed
    recorded = recorded_classes(ckpt) if ckpt is not None and not (args.dataset or args.test_classes) else None
    parts = datasets.load_split_banks(cfg, progress=not args.no_progress, recorded=recorded)
    bank = parts.part(kind)
    check_bank(bank, cfg.episodes, f"{kind} classes")
    if ckpt is not None:
        check_scored(ckpt, bank, kind, allow=args.allow_trained_classes, digests=bank_digests(parts, bank))
    t0 = time.perf_counter()
    res = evaluate(KNNClassifier(embed), bank, cfg.episodes, episodes=args.episodes, seed=args.seed,
                   batch_size=args.batch_size, device=device, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    res.pop("_per_episode")
    print(format_table(res, f"kNN ({what}) on {bank.num_classes} {kind} classes"))
    out = {**res, "classes": kind, "class_names": list(bank.names), "num_classes": bank.num_classes, "method": "knn",
           "features": "raw" if ckpt is None else str(args.features),
           "layer": None if ckpt is None else args.layer,
           "checkpoint": None if ckpt is None else str(args.features),
           "checkpoint_episodes": None if ckpt is None else ckpt.get("episodes_done"),
           "training": training_record(ckpt),
           "config": cfg.to_dict(), "command": ["fewshot-mann", "knn", *argv], "seconds": round(seconds, 3),
           "date": time.strftime("%Y-%m-%d"), "device": str(device)}
    write_evaluation(out, args.json, args.plot, f"kNN, {what}")
    return 0
