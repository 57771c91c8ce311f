"""MANN: an LSTM controller with an external memory (LRUA by default; NTM, DNC).

``model(images, label_inputs) -> logits``, the interface of every model:

- images: (batch, time, channels, height, width) float in [0, 1]
- label_inputs: (batch, time, label_size), the previous step's label (zeros at t=0)
- logits: (batch, time, label_groups * group_size), one softmax per label group.

Which implementation of the memory runs (the same maths) is ``memory_backend``
(``ModelConfig.memory_backend``; ``memory/backend.py`` decides what runs for it).
"""
from __future__ import annotations

import torch
from torch import nn

from fewshot_mann.config import Config, ModelConfig
from fewshot_mann.memory import backend
from fewshot_mann.memory.base import Memory
from fewshot_mann.memory.deferred import DeferredWeight
from fewshot_mann.memory.dnc.equations import DNCMemory
from fewshot_mann.memory.lrua.equations import LRUAMemory
from fewshot_mann.memory.lrua import sequence as lrua_sequence
from fewshot_mann.memory.ntm.equations import NTMMemory
from fewshot_mann.models.encoders import build_encoder
from fewshot_mann.models.memory_init import init_nearest_neighbour


def init_forget_gate_bias(bias: torch.Tensor, hidden: int) -> None:
    """An LSTM's forget gate starts open: its part of the gate bias (i, f, g, o order) set to 1."""
    with torch.no_grad():
        bias[hidden:2 * hidden].fill_(1.0)


def lstm_cell(gates: torch.Tensor, c: torch.Tensor):
    """The LSTM cell from the pre-activation gates (B, 4H) in (i, f, g, o) order: (h, c)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def build_memory(m: ModelConfig, interface_size: int | None = None) -> Memory:
    """The external memory named by ``m.model``: mann = LRUA, ntm = NTM, dnc = DNC. ``interface_size``: the
    width of what its interface layers read (the controller's output, and with ``memory_input`` the step's
    input beside it); ``m.controller_size`` where not given."""
    size = interface_size or m.controller_size
    if m.model == "ntm":
        return NTMMemory(size, m.memory_slots, m.memory_width, m.num_read_heads, m.num_write_heads, m.shift_range)
    if m.model == "dnc":
        return DNCMemory(size, m.memory_slots, m.memory_width, m.num_read_heads)
    return LRUAMemory(size, m.memory_slots, m.memory_width, m.num_read_heads, m.usage_decay, m.key_strength,
                      m.write_vector, reads_input=m.memory_input)


class MANN(nn.Module):
    """LSTM controller with an external memory.

    The controller input at step t is [features(x_t), y_{t-1}, r_{t-1}]; the output layer
    sees [h_t, r_t] (``features``). The input part of the LSTM gates is computed for all
    steps in one matmul before the recurrence. With ``previous_image`` (an extension), the
    input also holds features(x_{t-1}) (zeros at t=0), the image the label y_{t-1} belongs to.
    With ``memory_input`` (an extension), the memory's interface (keys, gates, written vector)
    reads [h_t, the step's input] instead of h_t alone, so a key can be the image itself, not
    what the LSTM state keeps of it (LRUA: its autograd path and sequence.py, not the C++ kernel;
    NTM's and DNC's steps).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.encoder = build_encoder(cfg)
        self.hidden = m.controller_size
        self.previous_image = m.previous_image
        self.image_width = self.encoder.out_features * (2 if self.previous_image else 1)
        in_size = self.image_width + cfg.episodes.label_size
        self.memory_input = m.memory_input
        self.memory = build_memory(m, self.hidden + (in_size if self.memory_input else 0))
        self.input_proj = nn.Linear(in_size, 4 * self.hidden)
        self.recurrent = nn.Linear(self.hidden + self.memory.read_size, 4 * self.hidden, bias=False)
        self.output = nn.Linear(self.hidden + self.memory.read_size, cfg.episodes.label_size)
        init_forget_gate_bias(self.input_proj.bias, self.hidden)
        if m.memory_init == "features":
            init_nearest_neighbour(self)
        # auto | autograd | sequence | kernel: see memory/backend.py. Not a parameter: a
        # checkpoint's weights run under any of them.
        self.memory_backend = m.memory_backend

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,T,C,H,W) -> (B,T,image_width): the image part of every step's controller input."""
        feats = self.encoder(images)
        if not self.previous_image:
            return feats
        return torch.cat([feats, torch.nn.functional.pad(feats[:, :-1], (0, 0, 1, 0))], dim=-1)

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        hr, time_major = self._controller_and_reads(self.encode(images), label_inputs)
        logits = self.output(hr)
        return logits.transpose(0, 1).contiguous() if time_major else logits

    @property
    def projects_images(self) -> bool:
        """Whether ``project_images`` / ``forward_projected`` apply (a per-image encoder; a step's
        input is not one image's with ``previous_image``)."""
        return bool(getattr(self.encoder, "per_image", False)) and not (self.previous_image or self.memory_input)

    def project_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 4H): each image's part of the controller's input gates, computed
        once per distinct image (evaluation reuses it at every appearance; ``forward_projected``)."""
        feats = self.encoder(images.unsqueeze(1)).squeeze(1)
        return feats @ self.input_proj.weight[:, :self.encoder.out_features].t()

    def forward_projected(self, image_gates: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        """``forward`` from ``project_images`` rows gathered per step: image_gates (B,T,4H),
        label_inputs (B,T,L) -> logits (B,T,L); the same maths, summed in another order."""
        hr, time_major = self._controller_and_reads(image_gates, label_inputs, projected=True)
        logits = self.output(hr)
        return logits.transpose(0, 1).contiguous() if time_major else logits

    def _gates_in(self, feats: torch.Tensor, label_inputs: torch.Tensor, projected: bool) -> torch.Tensor:
        """The input part of the LSTM gates for every step: (B,T,4H). ``projected``: ``feats`` are
        already ``project_images`` rows, only the label columns and the bias are added."""
        if projected:
            w = self.input_proj.weight[:, self.image_width:]
            return feats + torch.nn.functional.linear(label_inputs, w, self.input_proj.bias)
        return self.input_proj(torch.cat([feats, label_inputs], dim=-1))

    def features(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        """What the output layer reads, ``[h_t, r_t]`` per step: (B, T, H + read_size)."""
        hr, time_major = self._controller_and_reads(self.encode(images), label_inputs)
        return hr.transpose(0, 1) if time_major else hr

    def _controller_and_reads(self, feats: torch.Tensor, label_inputs: torch.Tensor, projected: bool = False):
        """feats (B,T,F) (or, ``projected``, image gates (B,T,4H)), label_inputs (B,T,L) ->
        ([h_t, r_t] of every step, time_major): (T,B,H+R) from a whole-sequence implementation,
        else (B,T,H+R)."""
        implementation = backend.choose(self.memory_backend, self.memory, feats)
        run = backend.sequence_function(self.memory, implementation)
        if run is not None:
            return self._sequence(run, feats, label_inputs, projected), True
        gates_in = self._gates_in(feats, label_inputs, projected)  # (B,T,4H)
        inputs = torch.cat([feats, label_inputs], dim=-1).unbind(1) if self.memory_input else None
        batch = feats.shape[0]
        h = gates_in.new_zeros(batch, self.hidden)
        c = gates_in.new_zeros(batch, self.hidden)
        state = self.memory.initial_state(batch, device=feats.device, dtype=gates_in.dtype)
        reads = state[-1]
        step = backend.step_function(self.memory, implementation)
        outs = []
        # The recurrent weight's gradient: one matmul over all steps (deferred.py).
        recurrent = DeferredWeight(self.recurrent.weight)
        # unbind, not gates_in[:, t]: indexing makes every step's backward allocate a
        # gradient the size of the whole sequence.
        for t, g_t in enumerate(gates_in.unbind(1)):
            h, c = lstm_cell(g_t + recurrent.linear(torch.cat([h, reads], dim=-1)), c)
            reads, state = step(h if inputs is None else torch.cat([h, inputs[t]], dim=-1), state)
            outs.append(torch.cat([h, reads], dim=-1))
        return torch.stack(outs, dim=1), False

    def _sequence(self, run, feats: torch.Tensor, label_inputs: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """The LRUA recurrence through ``run`` (sequence.lrua_sequence or the C++ kernel's
        cpp_lrua_sequence): feats (B,T,F), label_inputs (B,T,L) -> (T,B,H+R*W), time-major."""
        needs_grad = torch.is_grad_enabled() and (
            feats.requires_grad or any(p.requires_grad for p in self.parameters()))
        chunk = lrua_sequence.INFERENCE_CHUNK
        if feats.shape[0] > chunk and feats.device.type == "cpu" and not needs_grad:
            # CPU evaluation: episodes are independent; chunks keep a step's tensors in cache.
            return torch.cat([self._sequence(run, f, y, projected) for f, y in zip(
                feats.split(chunk), label_inputs.split(chunk))], dim=1)
        mem = self.memory
        step_inputs = None  # [x_t, y_{t-1}] time-major (T,B,F+L), where the images are not projected
        if projected:
            gates_in = self._gates_in(feats, label_inputs, True).transpose(0, 1).contiguous()  # (T,B,4H)
        else:
            step_inputs = torch.cat([feats.transpose(0, 1), label_inputs.transpose(0, 1)], dim=-1)
            gates_in = self.input_proj(step_inputs)
        layers = [mem.key, mem.gate] + [layer for layer in (mem.strength, mem.content) if layer is not None]
        weight = torch.cat([layer.weight for layer in layers])
        extensions = {}  # only sequence.lrua_sequence has them (LRUAMemory.implementations)
        if mem.content is not None:
            extensions["write_vector"] = True
        if self.memory_input:  # the interface reads [h_t, step input]: the input's part for all steps at once
            weight, w_input = weight[:, :self.hidden], weight[:, self.hidden:]
            extensions["control_input"] = torch.nn.functional.linear(step_inputs, w_input)  # never projected
        return run(gates_in, self.recurrent.weight, weight, torch.cat([layer.bias for layer in layers]),
                   memory_slots=mem.memory_slots, num_read_heads=mem.num_read_heads, usage_decay=mem.usage_decay,
                   key_strength=mem.strength is not None, **extensions)  # (T,B,H+R*W)
