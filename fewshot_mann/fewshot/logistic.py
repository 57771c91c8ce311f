"""Multinomial logistic regression fitted to a support set, many support sets at once.

The baseline users' notebooks run first: scikit-learn's ``LogisticRegression()`` (L2, ``C=1``,
intercept not penalised) fitted on the support images' vectors, then asked about the queries.
Fitting one per trial with scikit-learn costs ~50-100 ms at 5-way 5-shot on 1,280 features;
600 trials x several baselines is minutes. This solves the same convex problem for a whole
batch of support sets in one loop of tensor operations:

    minimise over W (D, L), b (L):   C * sum_i w_i * CE(x_i W + b, y_i)  +  0.5 * |W|^2

with per-point weights ``w_i`` (0/1: which points of a sequence are labelled support yet) and
only the labels present in the support (``present``) competing in the softmax (two labels: the
binomial model, as scikit-learn fits it). W stays in the
span of the support points (it starts at 0 and every gradient is ``X^T (C G + A)``), so it is
kept as ``W = X^T A`` and only the Gram matrix ``K = X X^T`` (S x S) is needed: the cost does not
grow with the feature width. The iteration is Nesterov's accelerated gradient with step 1/L
(L bounds the curvature: 1 + C/2 * the largest eigenvalue of the weighted [X, 1] Gram matrix),
restarted when the objective rises, until every problem's gradient is below ``tol``.
``tests/fewshot/test_logistic.py`` holds it to scikit-learn on random problems.
"""
from __future__ import annotations

import torch

from fewshot_mann.fewshot.base import FewShotClassifier

NEG = -1e30  # logit of a label absent from the support: never predicted


def _lipschitz(gram1: torch.Tensor, weights: torch.Tensor, c: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """(P,) upper estimate of the gradient's Lipschitz constant: power iteration on the
    weighted Gram matrix of [X, 1] (softmax cross-entropy has curvature at most 1/2)."""
    sw = weights.sqrt()
    m = sw.unsqueeze(-1) * gram1 * sw.unsqueeze(-2)  # (P,S,S)
    v = torch.ones(m.shape[:-1], dtype=m.dtype, device=m.device)
    lam = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
    for _ in range(iters):
        v = (m @ v.unsqueeze(-1)).squeeze(-1)
        lam = v.norm(dim=-1)
        v = v / lam.clamp_min(1e-30).unsqueeze(-1)
    return 1.0 + 0.5 * c * lam * 1.05 + 1e-12  # c: (P,)


def fit_logistic(gram: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, num_labels: int, *,
                 c: float = 1.0, tol: float = 1e-7, max_iter: int = 3000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit P problems. ``gram`` (P,S,S) = X X^T of each problem's S points; ``labels`` (P,S) int in
    [0, num_labels); ``weights`` (P,S) in {0, 1} (0: not part of this problem's support).

    Returns (A (P,S,L), b (P,L), present (P,L) bool): the decision function of a new point x is
    ``k(x) A + b`` with ``k(x)`` its dot products with the S points; labels not present score NEG."""
    p, s = labels.shape
    dt = gram.dtype
    onehot = torch.nn.functional.one_hot(labels.long(), num_labels).to(dt) * weights.unsqueeze(-1)  # (P,S,L)
    present = onehot.sum(1) > 0  # (P,L)
    absent = torch.where(present, 0.0, NEG).to(dt).unsqueeze(1)
    # two labels: scikit-learn fits the binomial model (one weight vector, penalty |w|^2 / 2), which is the
    # multinomial one at C / 2 (its optimum has w_1 = -w_0 = w / 2, so its penalty is |w|^2 / 4)
    c = torch.where(present.sum(1) == 2, c / 2, c).to(dt)  # (P,)
    step = 1.0 / _lipschitz(gram + 1.0, weights, c)  # (P,)

    def objective_and_grad(a, b):
        logits = gram @ a + b.unsqueeze(1) + absent  # (P,S,L)
        logp = torch.log_softmax(logits, -1)
        loss = -(onehot * logp).sum((1, 2))
        reg = 0.5 * (a * (gram @ a)).sum((1, 2))
        resid = (logp.exp() * weights.unsqueeze(-1) - onehot) * present.unsqueeze(1)  # (P,S,L): dCE/dlogits
        return c * loss + reg, c.view(p, 1, 1) * resid + a, c.view(p, 1) * resid.sum(1)  # grad in W = X^T(.), in b

    a = torch.zeros(p, s, num_labels, dtype=dt, device=gram.device)
    b = torch.zeros(p, num_labels, dtype=dt, device=gram.device)
    ya, yb = a, b
    t = torch.ones(p, dtype=dt, device=gram.device)
    f_prev = torch.full((p,), float("inf"), dtype=dt, device=gram.device)
    for _ in range(max_iter):
        _, ga, gb = objective_and_grad(ya, yb)
        a_new = ya - step.view(p, 1, 1) * ga
        b_new = yb - step.view(p, 1) * gb
        f_new, ga_new, gb_new = objective_and_grad(a_new, b_new)
        # |grad W|^2 = tr(G^T K G) for W-gradient X^T G
        gnorm = ((ga_new * (gram @ ga_new)).sum((1, 2)) + (gb_new ** 2).sum(1)).clamp_min(0).sqrt()
        restart = f_new > f_prev
        t_new = torch.where(restart, torch.ones_like(t), (1 + torch.sqrt(1 + 4 * t * t)) / 2)
        mom = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
        ya = a_new + mom.view(p, 1, 1) * (a_new - a)
        yb = b_new + mom.view(p, 1) * (b_new - b)
        a, b, t, f_prev = a_new, b_new, t_new, f_new
        if bool((gnorm < tol * (1 + f_new.abs())).all()):
            break
    return a, b, present


class LogisticRegression(FewShotClassifier):
    """``FewShotClassifier`` (``base.py``) by multinomial logistic regression (``fit_logistic``); ``scores``
    are log-probabilities. Computed in float64."""

    def __init__(self, c: float = 1.0, **solver):
        self.c, self.solver = c, solver

    def fit(self, support: torch.Tensor, labels: torch.Tensor, num_labels: int,
            weights: torch.Tensor | None = None) -> "LogisticRegression":
        self.support = support.double()
        gram = self.support @ self.support.transpose(1, 2)
        if weights is None:
            weights = torch.ones(labels.shape, dtype=torch.float64, device=self.support.device)
        self.a, self.b, self.present = fit_logistic(gram, labels, weights.double(), num_labels, c=self.c, **self.solver)
        return self

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        logits = (queries.double() @ self.support.transpose(1, 2)) @ self.a + self.b.unsqueeze(1)
        return torch.log_softmax(logits.masked_fill(~self.present.unsqueeze(1), NEG), -1)


def logistic_scores(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, num_labels: int,
                    c: float = 1.0, **kw) -> torch.Tensor:
    """Log-probabilities (E,Q,L) of each query under the logistic regression fitted on its
    episode's support: support (E,S,D), labels (E,S), queries (E,Q,D). Computed in float64."""
    return LogisticRegression(c, **kw).fit(support, labels, num_labels).scores(queries)
