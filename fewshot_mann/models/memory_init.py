"""``--memory-init features``: an LRUA MANN whose memory starts as a nearest-neighbour reader (issue 30).

Nearest centroid on a frozen encoder's unit-length features is a strong few-shot classifier; a MANN trained
from a random start over the same features learns to bind images to labels in memory but ended 0.6-4 points
below it. This starts the memory where that classifier is and lets meta-training move it from there. It needs
the extensions that let the memory see the pair it binds (``--previous-image --write-vector --memory-input``):
at step t the interface reads ``[h_t, f(x_t), f(x_{t-1}), y_{t-1}]`` and, at the start,

- every read key is ``tanh(FEATURE_GAIN * f(x_t))`` in its first D places (D = the feature width), zeros after
  (the small gain keeps tanh nearly linear, so the cosine of two keys is the features' own);
- every written vector is ``tanh(FEATURE_GAIN * f(x_{t-1}))`` then ``tanh(LABEL_GAIN * y_{t-1})``: the
  previous image with the label that arrived for it, in one row;
- the write gate sends writes to the least-used slots (a new row per step); the key strength is ``BETA``, so
  sharp that the read lands on the stored image nearest the step's own (a softer read sums the weights of a
  class's rows and favours classes shown more often);
- the output layer reads the label part of the reads (``OUTPUT_GAIN``), nothing else.

So a query reads the row whose stored image is nearest its own (cosine) and answers its label: the nearest
neighbour over the support set, nearest centroid at one shot, in the memory's own mechanism (its C++ kernel
aside: the extensions run on the sequence backend). The other interface weights start at ``NOISE`` times
PyTorch's default (the read heads are not copies of each other; meta-training can change everything).
``--memory-width`` must hold the features and the labels (D + label size). Chosen on the validation
characters (``reports/results-memory/README.md``): one read head, ``--usage-decay 0.99`` (with the paper's
0.95, 20-way 5-shot validation trials scored 93.5 % at the start against 97.6 % with 0.99: the rows stored first
were overwritten before the queries came).
"""
from __future__ import annotations

import torch

from fewshot_mann.errors import UserError

FEATURE_GAIN = 0.2
LABEL_GAIN = 0.1
BETA = 200.0
OUTPUT_GAIN = 50.0
NOISE = 0.001


def init_nearest_neighbour(model) -> None:
    """Set ``model`` (a ``models.mann.MANN`` with the three extensions) to the start described above."""
    mem, hidden = model.memory, model.hidden
    d = model.encoder.out_features
    labels = model.output.out_features
    width, heads = mem.memory_width, mem.num_read_heads
    if width < d + labels:
        raise UserError(f"--memory-init features stores the features ({d}) and the label ({labels}) in one row: "
                        f"--memory-width must be at least {d + labels} (got {width})")
    x_now, x_prev, y_prev = hidden, hidden + d, hidden + 2 * d  # columns of the interface's input
    eye = torch.eye(d)
    with torch.no_grad():
        for layer in (mem.key, mem.content, mem.gate, mem.strength):
            layer.weight.mul_(NOISE)
            layer.bias.zero_()
        model.output.weight.zero_()  # the last layer: no symmetry to break
        model.output.bias.zero_()
        for r in range(heads):
            row = r * width
            mem.key.weight[row:row + d, x_now:x_now + d] += FEATURE_GAIN * eye
            mem.content.weight[row:row + d, x_prev:x_prev + d] += FEATURE_GAIN * eye
            mem.content.weight[row + d:row + d + labels, y_prev:y_prev + labels] += LABEL_GAIN * torch.eye(labels)
            model.output.weight[:, hidden + row + d:hidden + row + d + labels] += OUTPUT_GAIN * torch.eye(labels)
        mem.gate.bias.fill_(-4.0)  # sigmoid -> 0.02: write to the least-used slots
        mem.strength.bias.fill_(float(torch.log(torch.expm1(torch.tensor(BETA - 1.0, dtype=torch.float64)))))  # 1 + softplus = BETA
