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

import torch
from torch import nn
from torch.nn import functional as F

from fewshot_mann.data.episodes import told_labels
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
        stored = told_labels(label_inputs).to(feats.dtype)  # the label of step s is the input of step s + 1
        # sums[:, t] = sum over s < t of label_s (outer) feature_s: (B, T, L, D)
        outer = stored.unsqueeze(-1) * feats.unsqueeze(2)
        sums = torch.cumsum(outer, dim=1) - outer
        counts = torch.cumsum(stored, dim=1) - stored  # (B, T, L)
        centroids = F.normalize(sums, dim=-1, eps=COSINE_EPS)
        scores = (centroids * feats.unsqueeze(2)).sum(-1)  # (B, T, L)
        return scores.masked_fill(counts == 0, -1e4)


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


