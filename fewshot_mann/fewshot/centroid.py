"""Nearest centroid fitted to a support set, many support sets at once (ProtoNets' rule, SimpleShot's
baseline): each label's centroid is the mean of its support vectors; a query scores minus its
squared Euclidean distance to each centroid. Labels absent from a support set never win."""
from __future__ import annotations

import torch

from fewshot_mann.fewshot.base import FewShotClassifier
from fewshot_mann.fewshot.logistic import NEG


class NearestCentroid(FewShotClassifier):
    """``FewShotClassifier`` by the nearest centroid; computed in float64."""

    def fit(self, support: torch.Tensor, labels: torch.Tensor, num_labels: int,
            weights: torch.Tensor | None = None) -> "NearestCentroid":
        xs = support.double()
        onehot = torch.nn.functional.one_hot(labels.long(), num_labels).double()  # (E,S,L)
        if weights is not None:
            onehot = onehot * weights.unsqueeze(-1)
        self.counts = onehot.sum(1)  # (E,L)
        self.centroids = (onehot.transpose(1, 2) @ xs) / self.counts.clamp_min(1).unsqueeze(-1)  # (E,L,D)
        return self

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        q = queries.double()  # |q - c|^2 by one batched product: torch.cdist took ~10x as long at kshot's shapes
        dist = q.square().sum(-1, keepdim=True) - 2 * q @ self.centroids.transpose(1, 2) \
            + self.centroids.square().sum(-1).unsqueeze(1)
        return (-dist).masked_fill(self.counts.unsqueeze(1) == 0, NEG)


def centroid_scores(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(E,Q,L) minus squared distances of each query to its episode's label centroids:
    support (E,S,D), labels (E,S) int, queries (E,Q,D). Computed in float64."""
    return NearestCentroid().fit(support, labels, num_labels).scores(queries)
