"""Nearest centroid fitted to a support set, many support sets at once (ProtoNets' rule, SimpleShot's
baseline): each label's centroid is the mean of its support vectors; a query scores minus its
squared Euclidean distance to each centroid. Labels absent from a support set never win."""
from __future__ import annotations

import torch

from fewshot_mann.fewshot.logistic import NEG


def centroid_scores(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(E,Q,L) minus squared distances of each query to its episode's label centroids:
    support (E,S,D), labels (E,S) int, queries (E,Q,D). Computed in float64."""
    xs, xq = support.double(), queries.double()
    onehot = torch.nn.functional.one_hot(labels.long(), num_labels).double()  # (E,S,L)
    counts = onehot.sum(1)  # (E,L)
    centroids = (onehot.transpose(1, 2) @ xs) / counts.clamp_min(1).unsqueeze(-1)  # (E,L,D)
    dist = torch.cdist(xq, centroids).square()
    return (-dist).masked_fill(counts.unsqueeze(1) == 0, NEG)
