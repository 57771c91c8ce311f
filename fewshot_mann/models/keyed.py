"""``--model keyed``: a label-keyed memory over (backbone) features, for photos.

The same label-shifted episodes and interface as every model, ``model(images, label_inputs)
-> logits``. The external memory has one slot per label. At step t, once the label of step
t-1 arrives (as input), the features of step t-1 are added to that label's slot; the slot
thus holds the sum (direction: the mean) of everything presented with the label so far.
The read at step t compares the current features with every slot by cosine similarity,
with a learned sharpness; a slot never written answers a learned "unseen label" score, so
the first presentation of a class picks a label not yet used.

Features: the encoder's (``encoders.FeatureEncoder``: centred on the episode mean, unit
length), plus a learned residual linear map (zero at initialisation), unit length again.
At initialisation the model is therefore exactly cosine nearest centroid on the centred
features; meta-training tunes the sharpness, the unseen-label score and the map. This is
what lets a memory model over frozen features match nearest centroid: the MANN's LSTM
must learn to carry each image to the next step to bind it to its label, which it learns
slowly on 1,280-wide features (measured in docs/your-own-dataset.md).

``keyed_write = "logistic"`` (``--keyed-write``): each label's slot holds instead the weights of a
multinomial logistic regression fitted (``fewshot/logistic.py``; C = 1, scikit-learn's default, with
``class_weight="balanced"``: a sequence tells its labels unevenly, and an unpenalised intercept fitted to
uneven counts answers the most told label, not the nearest) to the features told so far, and the read
is its log-probability of each written label: the logistic regression users' notebooks fit on frozen
features, as a memory the sequence writes and reads.
It is fitted, not learned, so a model with it meta-trains nothing (``--episodes 0``); with ``feature_norm
= "l2"`` and a balanced support it answers exactly what the "logistic regression on the features"
baseline does.

``read_power`` p < 1 (``--read-power``): the centroid read compares sign(z)|z|^p at unit length instead of z
(a power transform, as in few-shot work on ReLU features; z itself in the formulas below): the logistic write's
answers are unchanged, and its top score, which calibration's unknown threshold reads, tells images of classes
outside the support better (``reports/results-trust/README.md``).

One-hot labels only, any number of them: nothing learned depends on the number of labels, so
a model trained on 5-way episodes answers 2- to 20-way ones (``config.answers_any_ways``; kshot
``--ways``, predict with as many support classes as the folder holds). Slots are computed in closed form for all steps at once: with z the
unit features and y_s the label of step s, slot_t[l] = sum_{s<t} y_s[l] z_s, so
z_t . slot_t[l] comes from the causal Gram matrix and |slot_t[l]|^2 from a running sum.
"""
from __future__ import annotations

import torch
from torch import nn

from fewshot_mann.config import Config
from fewshot_mann.data.episodes import told_labels
from fewshot_mann.fewshot.logistic import NEG, LogisticRegression, prefix_logistic_scores
from fewshot_mann.models.encoders import build_encoder


class KeyedMemory(nn.Module):
    OPTIONAL_WEIGHTS = ("residual.weight",)  # an untrained (zero) map may be left out (_load_from_state_dict)

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder = build_encoder(cfg)
        width = self.encoder.out_features
        self.residual = nn.Linear(width, width, bias=False)
        nn.init.zeros_(self.residual.weight)
        self.log_sharpness = nn.Parameter(torch.tensor(2.3))  # exp(2.3) ~ 10
        self.unseen = nn.Parameter(torch.tensor(0.0))
        self.write = cfg.model.keyed_write
        self.read_power = cfg.model.read_power

    @property
    def reads_support_once(self) -> bool:
        """Whether ``support_query_scores`` holds (features read by a ``FeatureEncoder``)."""
        return hasattr(self.encoder, "following")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint may leave out an untrained (all-zero) residual map (the bundled photos model:
        # 1,600 x 1,600 zeros would be 10 MB of the package); it loads as the zeros it was.
        for name in self.OPTIONAL_WEIGHTS:
            state_dict.setdefault(prefix + name, torch.zeros_like(self.get_parameter(name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or bool(self.residual.weight.any()):
            x = x + self.residual(x)
        # else: an untrained (all-zero) map adds nothing; skipping it saves B*T*F^2 multiply-adds,
        # most of an evaluation of the bundled photos model (F = 1,280)
        return torch.nn.functional.normalize(x, dim=-1)

    def _powered(self, z: torch.Tensor) -> torch.Tensor:
        """What the centroid read compares: the unit features ``z`` raised elementwise to ``read_power``, sign
        kept, unit length again (a power transform: it evens out the few large values ReLU features carry, so
        the top cosine tells an image of none of the support's classes better; the logistic write's answers
        read ``z`` itself)."""
        if self.read_power == 1.0:
            return z
        return torch.nn.functional.normalize(z.sign() * z.abs().clamp_min(1e-12).pow(self.read_power), dim=-1)

    @staticmethod
    def _logistic_read(centroid: torch.Tensor, written: torch.Tensor, logistic: torch.Tensor) -> torch.Tensor:
        """The logistic write's answer, log-probabilities (..., L): whether the image shows a label not yet
        written is the centroid read's question (its "unseen" score against the slots' scaled cosines; a
        logistic regression fitted to one label cannot ask it), which written label it shows is the logistic
        regression's. P(l) = P_centroid(written) * P_logistic(l) for a written l, P_centroid(l) otherwise;
        with every label written (kshot's, predict's trials) this is the logistic regression itself.

        The log-probabilities are then shifted per answer (which changes no probability, at any temperature)
        so that the top score is the centroid read's top score: what calibration's unknown threshold reads
        (``engine/calibrate.py``) is then a scaled cosine that means the same at any number of classes,
        where the regression's top log-probability falls with every class added (a threshold fitted on
        5-way trials called 27 of 40 queries of a 7-class support folder unknown)."""
        log_centroid = torch.log_softmax(centroid, -1)
        log_written = torch.logsumexp(log_centroid.masked_fill(~written, NEG), -1, keepdim=True)
        log_logistic = torch.log_softmax(logistic.masked_fill(~written, NEG), -1).to(centroid.dtype)
        mixed = torch.where(written, log_written + log_logistic, log_centroid)
        return mixed - mixed.amax(-1, keepdim=True) + centroid.amax(-1, keepdim=True)

    def support_query_scores(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(E,Q,L): what ``forward`` answers at the last step of every sequence ``[*support[e], queries[e, q]]``
        (the support's labels told), with the support encoded and written once instead of once per query
        (kshot's trials). support (E,S,F) features, labels (E,S,L) one-hot, queries (E,Q,F)."""
        zs = self._unit(self.encoder(support))
        zq = self._unit(self.encoder.following(queries, support))
        slots = labels.to(zs.dtype).transpose(1, 2) @ self._powered(zs)  # (E,L,F): the sum of each label's support
        norm2 = slots.square().sum(-1).unsqueeze(1)  # (E,1,L)
        cosine = (self._powered(zq) @ slots.transpose(1, 2)) / norm2.clamp_min(1e-8).sqrt()
        written = norm2 > 1e-8
        scores = torch.where(written, cosine * self.log_sharpness.exp(), self.unseen.expand_as(cosine))
        if self.write == "mean":
            return scores
        fitted = LogisticRegression(balanced=True).fit(zs, labels.argmax(-1), labels.shape[-1])
        return self._logistic_read(scores, written.expand_as(scores), fitted.scores(zq))

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        z = self._unit(self.encoder(images))  # (B,T,F)
        b, t, _ = z.shape
        labels = told_labels(label_inputs)  # (B,T,L): label of step s
        read = self._powered(z)
        gram = read @ read.transpose(1, 2)  # (B,T,T)
        earlier = torch.ones(t, t, dtype=torch.bool, device=z.device).tril(-1)
        dots = gram.masked_fill(~earlier, 0.0) @ labels  # (B,T,L): z_t . slot_t[l]
        term = labels * (2 * dots + gram.diagonal(dim1=1, dim2=2).unsqueeze(-1))  # step s's growth of |slot|^2
        norm2 = torch.cumsum(term, dim=1) - term  # exclusive: steps s < t
        written = norm2 > 1e-8
        cosine = dots / norm2.clamp_min(1e-8).sqrt()
        scores = torch.where(written, cosine * self.log_sharpness.exp(), self.unseen.expand_as(cosine))
        if self.write == "mean":
            return scores
        return self._logistic_read(scores, written, prefix_logistic_scores(z, labels.argmax(-1), labels.shape[-1], balanced=True))


def last_step_scores(model: nn.Module, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
    """(B,L): what ``model(images, label_inputs)[:, -1]`` answers (each sequence's support, then one query).
    A model that reads the support once (``support_query_scores``) writes steps 0..T-2 with their labels and
    reads only the last step against them, instead of answering every earlier step too (which, with the
    logistic write, fits one regression per step): the unknown queries' sequences (``trust.unknown_query_scores``;
    predict, whose orders share one support, writes each order's once, ``engine/predict.py``)."""
    if getattr(model, "reads_support_once", False):
        told = told_labels(label_inputs)[:, :-1]
        return model.support_query_scores(images[:, :-1], told, images[:, -1:])[:, 0]
    return model(images, label_inputs)[:, -1]

