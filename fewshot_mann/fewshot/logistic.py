"""Multinomial logistic regression fitted to a support set, many support sets at once.

The baseline users' notebooks run first: scikit-learn's ``LogisticRegression()`` (L2, ``C=1``,
intercept not penalised) fitted on the support images' vectors, then asked about the queries.
Fitting one per trial with scikit-learn costs ~50-100 ms at 5-way 5-shot on 1,280 features;
600 trials x several baselines is minutes. This solves the same convex problem for a whole
batch of support sets in one loop of tensor operations:

    minimise over W (D, L), b (L):   C * sum_i w_i * CE(x_i W + b, y_i)  +  0.5 * |W|^2

with per-point weights ``w_i`` (0/1: which points of a sequence are labelled support yet; or scikit-learn's
``class_weight="balanced"``, ``balanced_weights``) and
only the labels present in the support (``present``) competing in the softmax (two labels: the
binomial model, as scikit-learn fits it). W stays in the
span of the support points (it starts at 0 and every gradient is ``X^T (C G + A)``), so it is
kept as ``W = X^T A`` and only the Gram matrix ``K = X X^T`` (S x S) is needed: the cost does not
grow with the feature width. The iteration is Newton's method on (A, b), one batched (S L + L)-square
linear solve per step with a backtracking line search, until every problem's gradient is below
``tol``: 5-15 steps where accelerated gradient descent (the first version) took hundreds to
thousands at the baselines' tolerance, so the fits no longer dominate a ``kshot`` run. Systems of more
than ``DIRECT_SOLVE_MAX`` unknowns (many ways, many shots: 2,020 at 20-way 5-shot) are solved by conjugate
gradients instead (``_newton_cg_direction``: truncated Newton, no matrix formed). Per problem on Omniglot
pixels, 2 threads, direct / CG (``reports/scripts/bench_logistic.py``, ``reports/performance_logistic_2026-12-07.json``):
5-way 5-shot 1.1 / 0.4 ms, 5-way 10-shot 3.8 / 1.1, 10-way 5-shot 24 / 1.9, 20-way 1-shot 21 / 1.2, 20-way 5-shot
798 / 14, the answers equal to 1e-7; below ~130 unknowns both take about a millisecond.
``tests/fewshot/test_heads.py`` holds both to scikit-learn on random problems.
"""
from __future__ import annotations

import torch

from fewshot_mann.fewshot.base import FewShotClassifier

NEG = -1e30  # logit of a label absent from the support: never predicted


# torch 2.14's batched CPU solve (MKL) fails ("Pivots given to lu_solve must all be greater or equal to 1") or
# never returns for systems of ~150 unknowns and more when two or more threads run (measured 2026-12-07 on the
# 2-core machine; one problem at a time, or one thread, is right): larger systems (10-way 3-shot is 310 unknowns)
# are solved one problem at a time, which costs nothing next to their O(n^3) factorisation.
BATCHED_SOLVE_MAX = 128
DIRECT_SOLVE_MAX = 128  # unknowns (S L + L) up to which the Newton system is formed and solved directly


def _solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve`` of a batch (P,n,n) x (P,n,1), around the batched-solve fault above."""
    if matrix.shape[-1] <= BATCHED_SOLVE_MAX or matrix.shape[0] == 1 or matrix.device.type != "cpu":
        return torch.linalg.solve(matrix, rhs)
    return torch.stack([torch.linalg.solve(m, r) for m, r in zip(matrix, rhs)])


def _newton_direction(gram, prob, weights, resid, a, c, damping: float = 1e-9):
    """The Newton step (dA (P,S,L), db (P,L)) of the objective in W = X^T A coordinates.

    Stationarity reads ``c R + A = 0`` (one row per point) and ``c sum_i R_i = 0``; linearising R
    around the current logits (R_i + H_i dz_i, H_i = w_i (diag p_i - p_i p_i^T), dz = K dA + db)
    gives one linear system of S L + L unknowns per problem, solved exactly. ``damping`` fixes the
    directions the objective is flat in (a constant added to every logit, absent labels). The system
    is written into one buffer (building it from concatenated blocks cost as much as solving it)."""
    p, s, l = prob.shape
    n = s * l
    h = weights.view(p, s, 1, 1) * (torch.diag_embed(prob) - prob.unsqueeze(-1) * prob.unsqueeze(-2))  # (P,S,L,L)
    h.mul_(c.view(p, 1, 1, 1))
    system = torch.empty(p, n + l, n + l, dtype=h.dtype, device=h.device)
    # c H K: entry ((i,l),(j,m)) = c H_i[l,m] K_ij
    torch.mul(h.unsqueeze(2), gram.view(p, s, s, 1, 1), out=system[:, :n, :n].view(p, s, l, s, l).transpose(2, 3))
    system[:, :n, n:] = h.reshape(p, n, l)  # c H E: the intercepts' columns
    # c E^T H K: entry (l, (j,m)) = c sum_i H_i[l,m] K_ij
    system[:, n:, :n] = torch.einsum("pilm,pij->pljm", h, gram).reshape(p, l, n)
    system[:, n:, n:] = h.sum(1)
    system.diagonal(dim1=1, dim2=2)[:, :n] += 1.0
    system.diagonal(dim1=1, dim2=2)[:, n:] += damping
    rhs = -torch.cat([(c.view(p, 1, 1) * resid + a).reshape(p, n), c.view(p, 1) * resid.sum(1)], -1)
    step = _solve(system, rhs.unsqueeze(-1)).squeeze(-1)
    return step[:, :n].reshape(p, s, l), step[:, n:]


def _newton_cg_direction(gram, prob, weights, resid, a, c, gnorm, max_iter: int = 1000):
    """The Newton step of ``_newton_direction`` without forming the system: conjugate gradients on
    ``M (dA, db) = -grad`` with ``M (dA, db) = (dA + c H z, c sum_i H_i z_i)``, z = K dA + db, which is
    self-adjoint in the inner product <(A1, b1), (A2, b2)> = tr(A1^T K A2) + b1 . b2 (the W-space one), each
    product O(S^2 L). Stopped at a residual of min(0.1, sqrt|grad|) |grad| (truncated Newton: an inexact
    step far from the optimum, an exact one near it); the outer iteration checks the true gradient."""
    p = prob.shape[0]
    cv = c.view(p, 1, 1)
    w = weights.unsqueeze(-1)

    def product(da, db):
        z = gram @ da + db.unsqueeze(1)
        hz = w * prob * (z - (prob * z).sum(-1, keepdim=True))  # H_i z_i
        return da + cv * hz, c.view(p, 1) * hz.sum(1)

    def inner(a1, b1, a2, b2):
        return (a1 * (gram @ a2)).sum((1, 2)) + (b1 * b2).sum(1)

    ra, rb = -(cv * resid + a), -c.view(p, 1) * resid.sum(1)
    xa, xb = torch.zeros_like(ra), torch.zeros_like(rb)
    da, db = ra.clone(), rb.clone()
    rr = inner(ra, rb, ra, rb)
    target = (torch.clamp(gnorm.sqrt(), max=0.1) * gnorm) ** 2
    for _ in range(max_iter):
        if not bool((rr > target).any()):
            break
        qa, qb = product(da, db)
        dq = inner(da, db, qa, qb)
        alpha = torch.where((rr > target) & (dq > 0), rr / dq.clamp_min(1e-300), 0.0)
        xa, xb = xa + alpha.view(p, 1, 1) * da, xb + alpha.view(p, 1) * db
        ra, rb = ra - alpha.view(p, 1, 1) * qa, rb - alpha.view(p, 1) * qb
        rr_new = inner(ra, rb, ra, rb)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(1e-300), 0.0)
        da, db = ra + beta.view(p, 1, 1) * da, rb + beta.view(p, 1) * db
        rr = rr_new
    return xa, xb


def fit_logistic(gram: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, num_labels: int, *,
                 c: float = 1.0, tol: float = 1e-9, max_iter: int = 100, chunk_elements: int = 2 ** 24,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit P problems. ``gram`` (P,S,S) = X X^T of each problem's S points; ``labels`` (P,S) int in
    [0, num_labels); ``weights`` (P,S) >= 0 (0: not part of this problem's support).

    Returns (A (P,S,L), b (P,L), present (P,L) bool): the decision function of a new point x is
    ``k(x) A + b`` with ``k(x)`` its dot products with the S points; labels not present score NEG.
    ``max_iter`` Newton steps at most (each with a backtracking line search); problems are solved
    ``chunk_elements / (S L + L)^2`` at a time (``chunk_elements / (S^2 L)`` by conjugate gradients) to bound
    the memory. ``start``: the (A, b) to start from (a nearby problem's optimum; the default is 0): the
    optimum is the same, reached in fewer steps."""
    p, s = labels.shape
    n = s * num_labels + num_labels
    per = max(1, chunk_elements // (n * n if n <= DIRECT_SOLVE_MAX else s * s * num_labels))
    parts = [_fit_chunk(gram[i:i + per], labels[i:i + per], weights[i:i + per], num_labels, c, tol, max_iter,
                        None if start is None else (start[0][i:i + per], start[1][i:i + per]))
             for i in range(0, max(p, 1), per)]  # no problems: one empty chunk, empty answers
    return parts[0] if len(parts) == 1 else tuple(torch.cat(t) for t in zip(*parts))


def _fit_chunk(gram, labels, weights, num_labels, c, tol, max_iter, start):
    """``fit_logistic`` of problems whose linear systems fit in memory together."""
    p, s = labels.shape
    dt = gram.dtype
    onehot = torch.nn.functional.one_hot(labels.long(), num_labels).to(dt) * weights.unsqueeze(-1)  # (P,S,L)
    present = onehot.sum(1) > 0  # (P,L)
    absent = torch.where(present, 0.0, NEG).to(dt).unsqueeze(1)
    # two labels: scikit-learn fits the binomial model (one weight vector, penalty |w|^2 / 2), which is the
    # multinomial one at C / 2 (its optimum has w_1 = -w_0 = w / 2, so its penalty is |w|^2 / 4)
    c = torch.where(present.sum(1) == 2, c / 2, c).to(dt)  # (P,)

    def evaluate(a, b):
        logp = torch.log_softmax(gram @ a + b.unsqueeze(1) + absent, -1)  # (P,S,L)
        f = c * -(onehot * logp).sum((1, 2)) + 0.5 * (a * (gram @ a)).sum((1, 2))
        resid = (logp.exp() * weights.unsqueeze(-1) - onehot) * present.unsqueeze(1)  # (P,S,L): dCE/dlogits
        return f, logp.exp(), resid

    if start is None:
        a = torch.zeros(p, s, num_labels, dtype=dt, device=gram.device)
        b = torch.zeros(p, num_labels, dtype=dt, device=gram.device)
    else:
        a, b = start[0].to(dt) * (weights > 0).unsqueeze(-1), start[1].to(dt) * present
    f, prob, resid = evaluate(a, b)
    for _ in range(max_iter):
        ga, gb = c.view(p, 1, 1) * resid + a, c.view(p, 1) * resid.sum(1)  # gradient in W = X^T(.), in b
        gnorm = ((ga * (gram @ ga)).sum((1, 2)) + (gb ** 2).sum(1)).clamp_min(0).sqrt()  # |grad W|^2 = tr(G^T K G)
        todo = gnorm >= tol * (1 + f.abs())
        if not bool(todo.any()):
            break
        da, db = torch.zeros_like(a), torch.zeros_like(b)
        rows = todo.nonzero().squeeze(1)  # only the problems not yet solved: late steps are few
        args = (gram[rows], prob[rows], weights[rows], resid[rows], a[rows], c[rows])
        if s * num_labels + num_labels <= DIRECT_SOLVE_MAX:
            da[rows], db[rows] = _newton_direction(*args)
        else:
            da[rows], db[rows] = _newton_cg_direction(*args, gnorm[rows])
        t = torch.where(todo, 1.0, 0.0).to(dt)
        for _ in range(30):  # backtracking: halve the step of each problem whose objective rose
            f_new, prob_new, resid_new = evaluate(a + t.view(p, 1, 1) * da, b + t.view(p, 1) * db)
            worse = f_new > f + 1e-12 * (1 + f.abs())
            if not bool(worse.any()):
                break
            t = torch.where(worse, t / 2, t)
        t = torch.where(worse, 0.0, t)  # no decrease found: that problem stays where it is
        a, b = a + t.view(p, 1, 1) * da, b + t.view(p, 1) * db
        b = (b - (b * present).sum(1, keepdim=True) / present.sum(1, keepdim=True).clamp_min(1)) * present
        stay = worse.view(p, 1, 1)  # the line search already evaluated every accepted step
        f, prob, resid = torch.where(worse, f, f_new), torch.where(stay, prob, prob_new), torch.where(stay, resid, resid_new)
    return a * (weights > 0).unsqueeze(-1), b, present


def balanced_weights(labels: torch.Tensor, weights: torch.Tensor, num_labels: int) -> torch.Tensor:
    """scikit-learn's ``class_weight="balanced"`` on the points that count: each point weighs
    n / (k * n_label) with n points (of weight > 0) of k labels, n_label of its own, so every label weighs
    the same in the fit whatever its count (a balanced support keeps weights 1). labels, weights (P,S)."""
    counted = (weights > 0).to(torch.float64)
    onehot = torch.nn.functional.one_hot(labels.long(), num_labels).to(torch.float64) * counted.unsqueeze(-1)
    per_label = onehot.sum(1)  # (P,L)
    n, k = counted.sum(1, keepdim=True), (per_label > 0).sum(1, keepdim=True).clamp_min(1)
    own = (onehot * per_label.unsqueeze(1)).sum(-1)  # (P,S): the count of each point's label
    return torch.where(counted > 0, weights.double() * n / (k * own.clamp_min(1)), 0.0)


class LogisticRegression(FewShotClassifier):
    """``FewShotClassifier`` (``base.py``) by multinomial logistic regression (``fit_logistic``); ``scores``
    are log-probabilities. Computed in float64."""

    def __init__(self, c: float = 1.0, balanced: bool = False, **solver):
        self.c, self.balanced, self.solver = c, balanced, solver

    def fit(self, support: torch.Tensor, labels: torch.Tensor, num_labels: int,
            weights: torch.Tensor | None = None) -> "LogisticRegression":
        self.support = support.double()
        gram = self.support @ self.support.transpose(1, 2)
        if weights is None:
            weights = torch.ones(labels.shape, dtype=torch.float64, device=self.support.device)
        if self.balanced:
            weights = balanced_weights(labels, weights, num_labels)
        self.a, self.b, self.present = fit_logistic(gram, labels, weights.double(), num_labels, c=self.c, **self.solver)
        return self

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        logits = (queries.double() @ self.support.transpose(1, 2)) @ self.a + self.b.unsqueeze(1)
        return torch.log_softmax(logits.masked_fill(~self.present.unsqueeze(1), NEG), -1)


def prefix_logistic_scores(x: torch.Tensor, labels: torch.Tensor, ways: int, balanced: bool = False) -> torch.Tensor:
    """(E,T,L) decision values of logistic regression at every step t of E sequences, fitted on the steps
    before t (a label-shifted episode's told steps): x (E,T,D), labels (E,T). Step 0 and labels not yet
    told score NEG. At step t every episode's problem is its first t points, so each step is one batch
    of E problems of t points (on the Gram matrix of the episode alone), not E problems of T points most
    of which weigh 0: the same optimum at a fraction of the work. ``balanced``: every told label weighs the
    same (``balanced_weights``; a sequence tells its labels unevenly). Computed in float64."""
    x = x.double()
    e, t, _ = x.shape
    gram = x @ x.transpose(1, 2)  # (E,T,T)
    out = torch.full((e, t, ways), NEG, dtype=torch.float64, device=x.device)  # step 0: nothing told
    a = b = None
    for step in range(1, t):
        weights = torch.ones(e, step, dtype=torch.float64, device=x.device)
        if balanced:
            weights = balanced_weights(labels[:, :step], weights, ways)
        start = None if a is None else (torch.nn.functional.pad(a, (0, 0, 0, 1)), b)  # the last step's optimum
        a, b, present = fit_logistic(gram[:, :step, :step].contiguous(), labels[:, :step], weights, ways, start=start)
        k = gram[:, step, :step]  # (E,step): the step's dot products with the told steps
        out[:, step] = ((k.unsqueeze(1) @ a).squeeze(1) + b).masked_fill(~present, NEG)
    return out


def logistic_scores(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, num_labels: int,
                    c: float = 1.0, **kw) -> torch.Tensor:
    """Log-probabilities (E,Q,L) of each query under the logistic regression fitted on its
    episode's support: support (E,S,D), labels (E,S), queries (E,Q,D). Computed in float64."""
    return LogisticRegression(c, **kw).fit(support, labels, num_labels).scores(queries)
