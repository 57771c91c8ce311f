"""Pretrain a backbone on the training classes with a prototypical loss (Snell et al. 2017).

The fast route to a convolutional MANN on CPU: training the ConvNet end to end inside the
recurrent model runs at ~20 episodes/s; a prototypical loss trains the same ConvNet in
minutes, after which its features are cached and the memory model meta-trains over them at
the speed of the 20x20 model (``--encoder fewshot:conv4 --encoder-weights W.pt``).

Each step draws ``ways`` training classes (rotations count as classes), ``shots`` support and
``queries`` query images of each; a query's logits are minus its squared distances to the
class means of the support features (the prototypes). Every ``check_every`` steps the
network is checked on the *validation* classes (5-way, ``check_shots``-shot nearest
prototype, the same seeded trials each time); the best check's weights are the result.

A pretrained timm backbone (``--encoder timm:NAME``, e.g. the offline ImageNet
``timm:tf_efficientnet_lite0``) is *fine-tuned* the same way on a folder of the user's classes:
only its last ``finetune_stages`` stages (and its head convolution) train; the frozen stem's
output is computed once per image (inference mode) and the episodes run through the tail
only, so a step costs a fraction of a forward pass of the whole network. ``finetune_stages = 0``
trains the whole network, stem convolution included (``--finetune-backbone all``).

Output: a weights-only file ``{"state_dict", "pretrain", "checks", "best"}`` (``--encoder-weights``
reads its ``state_dict``: for a timm backbone, the whole network), written atomically after
each improving check, and a log of the checks beside it (``.jsonl``). Beside them after every check,
the run's state (``OUT.state.pt``: the last weights, optimiser, schedule, random streams, checks):
``resume=True`` continues from it bit for bit (episode s draws the same classes and images as in an
unbroken run), and may extend the run (more ``episodes``); every other setting must be the run's own.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fewshot_mann.config import Config
from fewshot_mann.data.bank import ClassBank, FeatureBank
from fewshot_mann.data.pen import HANDWRITING, NO_PEN, PenStyle
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import atomic_write, atomic_write_text
from fewshot_mann.encoder_names import is_ensemble


@dataclass
class PretrainConfig:
    encoder: str = "fewshot:conv4"
    encoder_weights: str = "imagenet"  # timm backbones: the weights fine-tuning starts from (none: random, tests)
    dataset: str = "omniglot"
    data_root: str | None = None
    split: str = "santoro"
    test_classes: str | None = None  # folder datasets (as in train): never read here, only kept out
    validation_classes: str | None = None  # folder datasets (as in train)
    rotations: bool = True
    ways: int = 60
    shots: int = 1
    queries: int = 5
    episodes: int = 4000
    lr: float = 1e-3
    lr_halve_every: int = 2000
    check_every: int = 250
    check_trials: int = 300
    check_shots: int = 1
    finetune_stages: int = 2  # timm backbones: the last stages that train (the rest is frozen); 0 = all of it
    pen_augment: bool = False  # raw-pixel backbones: training images restyled as other handwriting (data/pen.py)
    within_alphabet: bool = False  # every training episode's classes from one alphabet (Lake's test protocol)
    seed: int = 0


def fewshot_backbone(encoder: str) -> tuple[torch.nn.Module, int]:
    """(network, input size) of a ``fewshot:NAME`` backbone, randomly initialised."""
    from fewshot_mann.models.conv4 import FEWSHOT_BACKBONES

    lib, _, name = encoder.partition(":")
    if lib != "fewshot" or name not in FEWSHOT_BACKBONES:
        raise UserError(f"pretrain trains the fewshot: backbones ({', '.join('fewshot:' + n for n in FEWSHOT_BACKBONES)}) "
                        f"or fine-tunes a timm: one; got {encoder!r}")
    make, size = FEWSHOT_BACKBONES[name]
    return make(), size


def split_timm(model: torch.nn.Module, stages: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(frozen stem, trainable tail) of a timm EfficientNet/MobileNet-style backbone: the tail is
    its last ``stages`` stages, head convolution and pooling (``stages = 0``: the whole network,
    the stem an identity); ``tail(stem(x))`` is its features."""
    from torch import nn

    from fewshot_mann.models.stages import has_stages

    if not has_stages(model):
        raise UserError("pretrain fine-tunes timm backbones built of conv_stem / blocks / conv_head "
                        "(EfficientNet, MobileNet); this one is not")
    if not 0 <= stages <= len(model.blocks):
        raise UserError(f"--finetune-stages must be between 0 (all) and {len(model.blocks)} (got {stages})")
    if stages == 0:
        stem, tail = nn.Identity(), nn.Sequential(model.conv_stem, model.bn1, *model.blocks, model.conv_head,
                                                  model.bn2, model.global_pool)
    else:
        stem = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:-stages]).eval()
        tail = nn.Sequential(*model.blocks[-stages:], model.conv_head, model.bn2, model.global_pool)
    for q in tail.parameters():
        q.requires_grad_(True)
    return stem, tail


@torch.inference_mode()
def stem_outputs(stem: torch.nn.Module, bank: ClassBank, prep, progress: bool = False) -> ClassBank:
    """The frozen stem's output (N, C, H, W) for every image of ``bank``, through
    ``features.run_backbone`` (the backbone's normalisation, grey to RGB, channels_last)."""
    from fewshot_mann.models.features import run_backbone

    shape = stem(torch.zeros(1, 3, *bank.images.shape[-2:])).shape[1:]
    flat = run_backbone(stem, bank.images, prep, progress=progress, desc="stem outputs (once)")
    return FeatureBank(flat.reshape(len(flat), *shape), bank.offsets, bank.counts, bank.names)


def load_parts(p: PretrainConfig, size: int, progress: bool):
    """Training and validation banks of images at ``size`` px, one channel (strokes bright)."""
    from fewshot_mann.engine.loading import load_image_parts

    cfg = Config()
    d = cfg.data
    d.dataset, d.data_root, d.split, d.image_size, d.channels = p.dataset, p.data_root, p.split, size, 1
    d.test_classes, d.validation_classes = p.test_classes, p.validation_classes
    cfg.model.encoder = p.encoder  # a backbone's reader: its input size, RGB for timm
    # the loader's episode needs are pretrain's own (--ways, --shots + --queries below), never the
    # defaults of train (5 held-out classes of 10 images): the test classes are only kept out
    cfg.episodes.ways, cfg.episodes.instances = 1, p.shots + p.queries
    parts = load_image_parts(cfg, progress=progress)
    train = parts.train.with_rotations() if p.rotations else parts.train
    for name, bank, need, shots, queries in (("training", train, p.ways, p.shots, p.queries),
                                             ("validation", parts.validation, 5, p.check_shots, 1)):
        if bank.num_classes < need or bank.min_count < shots + queries:
            raise UserError(f"{bank.num_classes} {name} classes (fewest images {bank.min_count}) cannot make a "
                            f"{need}-way episode of {shots} + {queries} images per class")
    return train, parts.validation


def draw(bank: ClassBank, rng: np.random.Generator, ways: int, per_class: int, groups=None) -> torch.Tensor:
    """(ways * per_class, C, S, S) float, class by class: images in [0, 1], or a stem's outputs.
    ``groups``: class indices by alphabet, each of at least ``ways``: the classes come from one of them."""
    if groups:
        group = groups[rng.integers(len(groups))]
        classes = rng.choice(group, ways, replace=False)
    else:
        classes = rng.choice(bank.num_classes, ways, replace=False)
    idx = np.concatenate([bank.offsets[c] + rng.choice(bank.counts[c], per_class, replace=False) for c in classes])
    x = torch.from_numpy(bank.images[idx]).float()
    return x if isinstance(bank, FeatureBank) else x.div_(255.0)


def alphabet_groups(bank: ClassBank, ways: int) -> list[np.ndarray]:
    """The training classes by alphabet (rotations with their alphabet), those with at least ``ways`` classes."""
    from fewshot_mann.data.episodes import name_groups

    groups = [g for g in name_groups(list(bank.names)) if len(g) >= ways]
    if not groups:
        raise UserError(f"--within-alphabet: no alphabet of the training classes has {ways} classes (give fewer --ways)")
    return groups


def prototype_logits(feats: torch.Tensor, ways: int, shots: int, queries: int) -> torch.Tensor:
    """feats (ways * (shots + queries), D), class by class -> (ways * queries, ways) logits."""
    f = feats.view(ways, shots + queries, -1)
    prototypes = f[:, :shots].mean(1)
    return -torch.cdist(f[:, shots:].reshape(ways * queries, -1), prototypes).pow(2)


@torch.inference_mode()
def check(net: torch.nn.Module, bank: ClassBank, p: PretrainConfig, device: torch.device, queries: int = 15,
          pen: PenStyle = NO_PEN) -> float:
    """5-way ``check_shots``-shot nearest-prototype accuracy on ``bank`` over seeded trials
    (15 queries per class, fewer where a class has fewer images); ``pen``: the trials' images
    restyled (seeded: the same looks at every check)."""
    queries = min(queries, bank.min_count - p.check_shots)
    was = net.training
    net.eval()
    rng, shots, hits = np.random.default_rng(p.seed + 1), p.check_shots, 0
    looks = torch.Generator().manual_seed(p.seed + 2)
    target = torch.arange(5, device=device).repeat_interleave(queries)
    for _ in range(p.check_trials):
        x = pen(draw(bank, rng, 5, shots + queries), looks).to(device).contiguous(memory_format=torch.channels_last)
        hits += int((prototype_logits(net(x), 5, shots, queries).argmax(1) == target).sum())
    net.train(was)
    return hits / (p.check_trials * 5 * queries)


def save(path: Path, net: torch.nn.Module, p: PretrainConfig, checks: list, best: dict) -> None:
    """``net``: the whole backbone (for a timm one, its tail's trained weights inside)."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    atomic_write(path, lambda f: torch.save({"state_dict": state, "pretrain": dataclasses.asdict(p),
                                            "checks": checks, "best": best}, f))


# settings a resumed run may change: the budget (to extend it) and where the same data lives now
RESUMABLE = ("episodes", "data_root")


def state_path(out: str | Path) -> Path:
    """Where the run that writes ``out`` keeps its resumable state."""
    return Path(out).with_suffix(".state.pt")


def load_state(out: Path, p: PretrainConfig) -> dict:
    """The saved state of the run writing ``out``; ``UserError`` (one line) where there is none, it is of
    other settings, or it has already trained ``p.episodes``."""
    path = state_path(out)
    if not path.is_file():
        raise UserError(f"--resume: no run state at {path} (a run writes it at its first check); "
                        "start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is one line, not a traceback
        raise UserError(f"--resume: cannot read {path} ({type(exc).__name__}); start the run again") from exc
    own, asked = state["pretrain"], dataclasses.asdict(p)
    differ = [f"--{k.replace('_', '-')} {asked[k]} (the run has {own.get(k)})" for k in asked
              if k not in RESUMABLE and asked[k] != own.get(k)]
    if differ:
        raise UserError(f"--resume: the run at {out} was started with other settings: {'; '.join(differ)} "
                        f"(a resume may change only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)})")
    if state["step"] >= p.episodes:
        raise UserError(f"--resume: the run at {out} has already trained {state['step']} episodes; "
                        f"give --episodes above {state['step']} to extend it")
    return state


def save_state(out: Path, p: PretrainConfig, step: int, net, opt, sched, rng, looks, checks, best) -> None:
    state = {"pretrain": dataclasses.asdict(p), "step": step, "checks": checks, "best": best,
             "net": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, "opt": opt.state_dict(),
             "sched": sched.state_dict(), "rng": rng.bit_generator.state, "looks": looks.get_state(),
             "torch_rng": torch.get_rng_state()}
    atomic_write(state_path(out), lambda f: torch.save(state, f))


def restore(saved: dict, net, opt, sched, rng, looks) -> tuple[list, dict, int]:
    """Put a saved run state back into the run's objects; (checks, best, the first episode to train)."""
    net.load_state_dict(saved["net"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    rng.bit_generator.state = saved["rng"]
    looks.set_state(saved["looks"])
    torch.set_rng_state(saved["torch_rng"])
    return list(saved["checks"]), dict(saved["best"]), saved["step"] + 1


def networks_and_banks(p: PretrainConfig, progress: bool):
    """(the whole backbone, the part that trains, training bank, validation bank): for a timm backbone
    the banks hold its frozen stem's outputs and the part that trains is its tail."""
    if is_ensemble(p.encoder):
        raise UserError(f"pretrain trains one backbone; {p.encoder} joins several: pretrain each alone")
    if p.encoder.startswith("timm:"):
        from fewshot_mann.models.backbones import build_backbone, preprocessing

        prep = preprocessing(p.encoder)
        if p.pen_augment:
            raise UserError("--pen-augment restyles raw pixels: it trains the fewshot: backbones, not a timm one")
        whole, _ = build_backbone(p.encoder, p.encoder_weights)
        stem, net = split_timm(whole, p.finetune_stages)
        train, val = load_parts(p, prep.image_size, progress)
        train, val = stem_outputs(stem, train, prep, progress), stem_outputs(stem, val, prep, progress)
    else:
        with torch.random.fork_rng(devices=[]):  # the seeded initialisation, built once
            torch.manual_seed(p.seed)
            whole, size = fewshot_backbone(p.encoder)
        net = whole
        train, val = load_parts(p, size, progress)
    return whole, net, train, val


def pretrain(p: PretrainConfig, out: str | Path, *, device: torch.device, progress: bool = True,
             resume: bool = False) -> dict:
    """Train ``p.encoder`` on the training classes; returns the best validation check. ``resume``: continue
    the run whose state is beside ``out`` (``state_path``)."""
    out = Path(out)
    saved = load_state(out, p) if resume else None
    whole, net, train, val = networks_and_banks(p, progress)
    net = net.to(device).to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=p.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, p.lr_halve_every), gamma=0.5)
    rng = np.random.default_rng(p.seed)
    target = torch.arange(p.ways, device=device).repeat_interleave(p.queries)
    checks, best, t0, first = [], {"accuracy": -1.0}, time.perf_counter(), 1
    pen, looks = (HANDWRITING if p.pen_augment else NO_PEN), torch.Generator().manual_seed(p.seed)
    if saved is not None:
        checks, best, first = restore(saved, net, opt, sched, rng, looks)
        t0 -= checks[-1]["seconds"]  # the state is saved at a check: the clock goes on from that check's
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=p.episodes, initial=first - 1, desc=f"pretraining {p.encoder}", unit="ep", file=sys.stderr)

    def record(step: int, loss: float | None) -> None:
        nonlocal best
        acc = check(net, val, p, device)
        row = {"episode": step, "seconds": round(time.perf_counter() - t0, 1),
               "loss": None if loss is None else round(loss, 4),
               "validation_accuracy": round(acc, 5), "check": f"5-way {p.check_shots}-shot, {p.check_trials} trials"}
        if p.pen_augment:  # the same trials restyled: what the augmentation is for
            row["validation_accuracy_pen"] = round(check(net, val, p, device, pen=HANDWRITING), 5)
        checks.append(row)
        if acc > best["accuracy"]:
            best = {"accuracy": acc, "episode": step}
            save(out, whole, p, checks, best)
        atomic_write_text(out.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in checks))
        save_state(out, p, step, net, opt, sched, rng, looks, checks, best)
        pen = f", restyled {100 * row['validation_accuracy_pen']:.2f}%" if p.pen_augment else ""
        msg = (f"episode {step}: validation {100 * acc:.2f}%{pen} (best {100 * best['accuracy']:.2f}% at "
               f"{best['episode']}), {row['seconds']:.0f} s")
        (bar.write if bar is not None else print)(msg)

    if saved is None:
        record(0, None)  # the starting point: fine-tuning that never helps keeps the weights it started from
    groups = alphabet_groups(train, p.ways) if p.within_alphabet else None
    for step in range(first, p.episodes + 1):
        x = pen(draw(train, rng, p.ways, p.shots + p.queries, groups), looks).to(device).contiguous(
            memory_format=torch.channels_last)
        loss = F.cross_entropy(prototype_logits(net(x), p.ways, p.shots, p.queries), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
        if step % p.check_every == 0 or step == p.episodes:
            record(step, float(loss.detach()))
    if bar is not None:
        bar.close()
    return best
