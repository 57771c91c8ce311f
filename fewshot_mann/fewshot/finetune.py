"""Fine-tuning a backbone's last stages to one support set (``--finetune STEPS``), over cached earlier stages.

The CD-FSL finding (Guo et al. 2020): across domains, fine-tuning to the support images beats every
frozen-feature method at 5 shots. Done naively it costs minutes a trial on a CPU; here it takes
seconds, because only the backbone's *tail* trains:

- ``models.stages.StagedBackbone`` splits a timm EfficientNet/MobileNet-style network (``conv_stem``,
  ``blocks``, ``conv_head``) into a frozen ``stem`` (the image to the output of stage ``cut - 1``) and a
  trainable ``tail`` (the last stages, the head convolution, the pooling, and the checkpoint's
  ``feature_stages`` read beside the head): the features are ``tail(stem(x))``, the frozen embedding's.
- ``ViewCache`` runs each image through the stem once per view and keeps the maps: view 0 is the
  image as the model reads it, views 1.. are augmented (random resized crop, flip, colour jitter),
  drawn from the image's own seed (the same views whichever trial the image is in).
- ``finetune_features`` copies the tail, puts a cosine classifier on it initialised at the support
  set's class means, trains both for ``steps`` steps on the support images' views (cross-entropy,
  Adam; batch norm keeps its ImageNet statistics), then returns the tuned features of the support
  images and of the queries (view 0). The queries are never seen before that last forward pass.

Where the checkpoint embeds in bfloat16 (``--embed-precision``, auto: where the CPU computes it natively),
the stem's views and the training steps run in bfloat16 too (about 1.7x faster on the project's CPU, the
same accuracy on validation trials); the features read after tuning are float32.

The tuned features then go to the checkpoint's own model, as the frozen ones do without fine-tuning
(``--finetune 0`` is exactly the frozen path). The steps (40), learning rate, views and tail length (the last stage
and the head convolution) were chosen on validation domains
(``reports/scripts/select_finetune.py``; ``reports/results-finetune/``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from fewshot_mann import limits
from fewshot_mann.errors import UserError
from fewshot_mann.encoder_names import is_staged
from fewshot_mann.models.ensemble import staged as split_staged


@dataclass(frozen=True)
class FinetuneSettings:
    """One fine-tuning recipe. ``tail_stages``: how many of the backbone's last stages train (0 = only
    the head convolution); ``views``: stem outputs kept per image (1 clean + augmented ones)."""

    steps: int = limits.FINETUNE_STEPS
    lr: float = 1e-3
    head_lr: float = 1e-2
    tail_stages: int = 1
    views: int = 8
    scale: float = 10.0  # the cosine classifier's logit scale
    batch: int = 50  # support views per step
    bf16: bool = False  # the training steps' forward in bfloat16 (CPU autocast); the features read after in float32


DEFAULT = FinetuneSettings()


def augment(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(3, S, S) uint8 -> one augmented view of the same size (uint8): a random resized crop (area
    0.35-1, aspect 3/4-4/3), a horizontal flip half the time, brightness/contrast/saturation x 0.6-1.4."""
    import torchvision.transforms.v2.functional as F

    _, h, w = image.shape
    u = torch.rand(6, generator=gen).tolist()
    area = h * w * (0.35 + 0.65 * u[0])
    aspect = float(np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[1]))
    ch = int(round(min(h, np.sqrt(area / aspect))))
    cw = int(round(min(w, np.sqrt(area * aspect))))
    top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
    out = F.resized_crop(image, top, left, ch, cw, [h, w], antialias=True)
    if u[4] < 0.5:
        out = F.horizontal_flip(out)
    jitter = (0.6 + 0.8 * torch.rand(3, generator=gen)).tolist()
    out = F.adjust_brightness(out, jitter[0])
    out = F.adjust_contrast(out, jitter[1])
    return F.adjust_saturation(out, jitter[2])


def seeded_generator(*seed: int) -> torch.Generator:
    """A torch generator that is a pure function of the integers ``seed`` (hashed by ``SeedSequence``)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))


class ViewCache:
    """Stem outputs of a bank's images, computed once per (image row, view) on first use.

    ``images``: (N, C, S, S) uint8 as the model reads them; ``mean``/``std``: the backbone's
    normalisation; ``seed``: view v of row i is drawn from ``(seed, i, v)``, whatever asks for it; ``bf16``: the
    stem runs in bfloat16 (CPU autocast), its maps kept in float32."""

    def __init__(self, staged: nn.Module, images: np.ndarray, mean, std, seed: int = 0, batch: int = 32,
                 bf16: bool = False):
        self.staged, self.images, self.seed, self.batch, self.bf16 = staged, images, seed, batch, bf16
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._maps: dict[tuple[int, int], torch.Tensor] = {}

    def _view(self, row: int, view: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.images[row]))
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if view:
            x = augment(x.contiguous(), seeded_generator(self.seed, row, view))
        return x.float().div_(255.0)

    @torch.no_grad()  # not inference mode: the maps are inputs of the tail's training
    def maps(self, rows, views) -> torch.Tensor:
        """(len(rows), len(views), C', H', W') stem outputs (float32)."""
        todo = [(r, v) for r in rows for v in views if (r, v) not in self._maps]
        for first in range(0, len(todo), self.batch):
            part = todo[first:first + self.batch]
            x = torch.stack([self._view(r, v) for r, v in part])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                out = self.staged.stem(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
            out = out.float()
            for key, m in zip(part, out.contiguous()):
                self._maps[key] = m.clone()
        return torch.stack([torch.stack([self._maps[(r, v)] for v in views]) for r in rows])


def tune_tail(cache: ViewCache, support_rows, support_labels, ways: int, settings: FinetuneSettings, seed=0,
              progress=None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A copy of the tail (and a cosine classifier initialised at the class means) trained ``settings.steps``
    steps on the support rows' views: (tuned tail, classifier weight, the support rows' clean stem maps).
    ``progress(step, steps)`` is told after each step."""
    support_rows = list(map(int, support_rows))
    y = torch.as_tensor(np.asarray(support_labels), dtype=torch.long)
    tail = copy.deepcopy(cache.staged.tail)
    clean = cache.maps(support_rows, [0])[:, 0]
    with torch.no_grad():
        feats = nn.functional.normalize(tail(clean), dim=-1)
        protos = torch.zeros(ways, feats.shape[1]).index_add_(0, y, feats)
        weight = nn.Parameter(nn.functional.normalize(protos, dim=-1))
    if settings.steps:
        tail.eval()  # batch norm keeps its statistics: a support set is far too small to estimate them
        params = [p for p in tail.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam([{"params": params, "lr": settings.lr}, {"params": [weight], "lr": settings.head_lr}])
        views = cache.maps(support_rows, range(settings.views))  # (S, V, C, H, W)
        gen = seeded_generator(*np.atleast_1d(seed).tolist())
        s, v = views.shape[:2]
        for step in range(settings.steps):
            pick = torch.randint(0, s * v, (min(settings.batch, s * v),), generator=gen)
            x = views.flatten(0, 1)[pick]
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                f = nn.functional.normalize(tail(x).float(), dim=-1)
            logits = settings.scale * f @ nn.functional.normalize(weight, dim=-1).T
            loss = nn.functional.cross_entropy(logits, y[pick // v])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, settings.steps)
    return tail, weight, clean


def finetune_features(cache: ViewCache, support_rows, support_labels, query_rows, ways: int,
                      settings: FinetuneSettings, seed=0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tune a copy of the tail (and a cosine classifier) on the support rows' views; returns
    (support features (S, D), query features (Q, D), the tuned classifier's query logits (Q, ways)),
    features as the tuned tail gives them (view 0). ``settings.steps == 0``: the frozen features."""
    tail, weight, clean = tune_tail(cache, support_rows, support_labels, ways, settings, seed)
    query_rows = list(map(int, query_rows))
    with torch.inference_mode():
        sup = tail(clean)
        qry = tail(cache.maps(query_rows, [0])[:, 0]) if query_rows else sup[:0]
        q_logits = settings.scale * nn.functional.normalize(qry, dim=-1) @ nn.functional.normalize(weight, dim=-1).T
    return sup.detach(), qry.detach(), q_logits.detach()


HEADS = ("centroid", "logistic", "cosine")


def finetuned_scores(cache: ViewCache, support_rows, support_labels, query_rows, ways: int,
                     settings: FinetuneSettings, seed=0) -> dict[str, torch.Tensor]:
    """{head: (Q, ways) scores} of the queries after one fine-tuning, read by each of ``HEADS``: nearest
    centroid and logistic regression on the unit-length tuned features, and the tuned cosine classifier."""
    from fewshot_mann.fewshot import centroid_scores, logistic_scores

    sup, qry, logits = finetune_features(cache, support_rows, support_labels, query_rows, ways, settings, seed)
    y = torch.as_tensor(np.asarray(support_labels), dtype=torch.long)[None]
    xs, xq = nn.functional.normalize(sup.double(), dim=-1)[None], nn.functional.normalize(qry.double(), dim=-1)[None]
    return {"centroid": centroid_scores(xs, y, xq, ways)[0], "cosine": logits,
            "logistic": logistic_scores(xs, y, xq, ways)[0]}


class Finetuner:
    """A checkpoint's backbone, staged once for fine-tuning, with its settings: ``tune`` answers one support set.

    ``model_cfg``: the checkpoint's ``ModelConfig`` (a timm backbone); ``images``: (N, C, S, S) uint8, every
    image a trial or a prediction may use (support and queries), as the model reads them."""

    def __init__(self, model_cfg, settings: FinetuneSettings, images: np.ndarray, seed: int = 0):
        from fewshot_mann.models.backbones import build_backbone, preprocessing
        from fewshot_mann.models.features import embed_precision

        if not is_staged(model_cfg.encoder):
            raise UserError(f"--finetune needs a timm backbone checkpoint; this one reads {model_cfg.encoder}")
        # the checkpoint's embedding precision, resolved once (auto: bf16 where the CPU computes it natively)
        self.settings = replace(settings, bf16=embed_precision(model_cfg) == "bf16")
        prep = preprocessing(model_cfg.encoder)
        backbone, _ = build_backbone(model_cfg.encoder, model_cfg.encoder_weights)
        staged = split_staged(backbone, settings.tail_stages, model_cfg.feature_stages)
        self.cache = ViewCache(staged, images, prep.mean, prep.std, seed=seed, bf16=self.settings.bf16)
        self.rows = np.arange(len(images))  # row i of the bank it serves -> row of ``images``

    def subset(self, bank, class_indices) -> "Finetuner":
        """The same finetuner (and cached views) for ``bank.subset(class_indices)``'s rows."""
        out = copy.copy(self)
        out.rows = np.concatenate([self.rows[bank.offsets[c]:bank.offsets[c] + bank.counts[c]] for c in class_indices]
                                  or [np.zeros(0, np.int64)])
        return out

    def tune(self, support_rows, support_labels, query_rows, ways: int, seed=0) -> tuple[np.ndarray, np.ndarray]:
        """(support features, query features) float32 after fine-tuning on the support rows alone."""
        sup, qry, _ = finetune_features(self.cache, self.rows[np.asarray(support_rows)], support_labels,
                                        self.rows[np.asarray(query_rows)], ways, self.settings, seed)
        return sup.float().numpy(), qry.float().numpy()

    def tune_support(self, support_rows, support_labels, ways: int, seed=0, progress=None):
        """Tune once on the support rows alone: (support features, ``features``), ``features(images)`` giving
        any later (N, C, S, S) uint8 images' features through the tuned tail, as ``tune`` gives its queries'."""
        tail, _, clean = tune_tail(self.cache, self.rows[np.asarray(support_rows)], support_labels, ways,
                                   self.settings, seed, progress)
        with torch.inference_mode():
            sup = tail(clean).float().numpy()

        def features(images: np.ndarray) -> np.ndarray:
            cache = ViewCache(self.cache.staged, images, self.cache.mean.flatten().tolist(),
                              self.cache.std.flatten().tolist(), seed=self.cache.seed, batch=self.cache.batch,
                              bf16=self.cache.bf16)
            with torch.inference_mode():
                return tail(cache.maps(range(len(images)), [0])[:, 0]).float().numpy() if len(images) else sup[:0]
        return sup, features


def settings_for(steps: int) -> FinetuneSettings:
    """The recipe chosen on validation domains, run for ``steps`` steps."""
    return replace(DEFAULT, steps=steps)
