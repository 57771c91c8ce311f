"""The one interface of every few-shot classifier here (easyfsl's ``FewShotClassifier``: process the
support set, then score queries), batched over many support sets at once."""
from __future__ import annotations

import torch


class FewShotClassifier:
    """``fit(support, labels, num_labels, weights)`` on E support sets, then ``scores(queries)``.

    support: (E,S,D) vectors; labels: (E,S) ints in [0, num_labels); weights: (E,S) 0/1, which
    support points count (None: all; a sequence's steps not yet told are 0); queries: (E,Q,D).
    ``scores`` is (E,Q,L), higher is likelier; a label absent from a support set never wins."""

    def fit(self, support: torch.Tensor, labels: torch.Tensor, num_labels: int,
            weights: torch.Tensor | None = None) -> "FewShotClassifier":
        raise NotImplementedError

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
