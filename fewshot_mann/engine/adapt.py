"""``--adapt STEPS``: meta-fine-tune a copy of a model on the support set before answering.

The support set of a task (N classes, K labelled images each) is turned into label-shifted
training episodes like the ones the model was meta-trained on: each episode presents every
support class a random number of times in 1..K+1 (with K = 1 a class is shown twice), with
freshly shuffled labels and order, each presentation augmented (pixels: a random shift of up
to 2 pixels and a small contrast/brightness change; backbone features: Gaussian noise of 0.1
of the features' spread and 10% dropout). STEPS Adam steps (lr 1e-4, batch 8) on these
episodes, then the copy answers; the original model is never changed.

No query image is ever used: adapting is as inductive as the frozen model.
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import torch

from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.episodes import Episodes, Jitter, Photometric, to_tensors
from fewshot_mann.engine.evaluation import loss_fn

ADAPT_LR = 1e-4
ADAPT_BATCH = 8


def support_episodes(images: np.ndarray, labels: np.ndarray, cfg: EpisodeConfig, rng: np.random.Generator,
                     batch: int) -> Episodes:
    """``batch`` label-shifted episodes drawn from one support set.

    images: (S, ...) support images or features; labels: (S,) class 0..ways-1 of each."""
    ways = cfg.ways
    by_class = [np.flatnonzero(labels == c) for c in range(ways)]
    k = max(len(b) for b in by_class)
    reps = min(k + 1, max(2, cfg.instances))
    steps = ways * reps
    out_images, out_labels, out_instance = [], [], []
    for _ in range(batch):
        relabel = rng.permutation(ways)
        picks = []
        for c, members in enumerate(by_class):
            idx = rng.choice(members, size=reps, replace=len(members) < reps)
            picks += [(int(i), int(relabel[c])) for i in idx]
        order = rng.permutation(steps)
        chosen = [picks[i] for i in order]
        lab = np.array([l for _, l in chosen])
        inst = np.zeros(steps, np.int64)
        seen = np.zeros(ways, np.int64)
        for t, l in enumerate(lab):
            inst[t] = seen[l]
            seen[l] += 1
        out_images.append(images[[i for i, _ in chosen]])
        out_labels.append(lab)
        out_instance.append(inst)
    digits = np.tile(np.arange(ways)[None, :, None], (batch, 1, 1))
    classes = np.tile(np.arange(ways)[None], (batch, 1))
    return Episodes(np.stack(out_images), np.stack(out_labels).astype(np.int64), np.stack(out_instance),
                    digits.astype(np.int64), classes)


def adapt_to_support(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, cfg: EpisodeConfig,
                     steps: int, seed=0, lr: float = ADAPT_LR, batch: int = ADAPT_BATCH) -> torch.nn.Module:
    """A copy of ``model`` fine-tuned for ``steps`` steps on episodes of the support set (see module doc)."""
    net = copy.deepcopy(model)
    net.train()
    device = next(net.parameters()).device
    rng = np.random.default_rng([4, *np.atleast_1d(seed).tolist()])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    pixels = images.dtype == np.uint8
    shift, photo = Jitter(2.0, 0.0), Photometric(0.0, 0.1, 0.05)
    spread = float(np.std(images)) if not pixels else 0.0
    from tqdm import tqdm

    with torch.enable_grad():  # a bar from 100 steps on: up to MAX_ADAPT_STEPS can take minutes
        for _ in tqdm(range(steps), desc="adapting to the support set", unit="step", leave=False,
                      disable=steps < 100, file=sys.stderr):
            ep = support_episodes(images, labels, cfg, rng, batch)
            tb = to_tensors(ep, cfg, device)
            x = tb.images
            if pixels:
                x = photo(shift(x, gen), gen)
            else:
                noise = torch.randn(x.shape, generator=gen).to(device) * (0.1 * spread)
                keep = (torch.rand(x.shape, generator=gen) > 0.1).float().to(device) / 0.9
                x = (x + noise) * keep
            loss = loss_fn(net(x, tb.label_inputs), tb.targets, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
    net.eval()
    return net
