"""Sequence models over label-shifted episodes: MANN (LSTM controller + LRUA memory),
and the paper's LSTM and feed-forward baselines, all behind one interface:

``model(images, label_inputs) -> logits``

- images: (batch, time, channels, height, width) float in [0, 1]
- label_inputs: (batch, time, label_size), the previous step's label (zeros at t=0)
- logits: (batch, time, label_groups * group_size), one softmax per label group.
"""
from __future__ import annotations

import torch
from torch import nn

from fewshot_mann.config import Config, ModelConfig, is_backbone
from fewshot_mann.errors import UserError
from fewshot_mann.memory.deferred import DeferredWeight
from fewshot_mann.memory.lrua.equations import LRUAMemory


class LinearEncoder(nn.Module):
    """The paper's input: raw pixels, flattened. (B,T,C,H,W) -> (B,T,C*H*W)."""

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.out_features = channels * image_size * image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(2)


class ConvEncoder(nn.Module):
    """A small CNN applied to every image: (B,T,C,H,W) -> (B,T,features)."""

    def __init__(self, channels: int, image_size: int, width: int = 64):
        super().__init__()
        layers, size, c_in = [], image_size, channels
        for c_out in (32, width, width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, size = c_out, size // 2
            if size < 2:
                break
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = c_in * size * size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, t = images.shape[:2]
        return self.net(images.flatten(0, 1)).view(b, t, -1)


class FeatureEncoder(nn.Module):
    """Backbone features (B,T,D) -> (B,T,D), normalised so that a cosine read compares
    directions that tell the episode's classes apart:

    - ``center-l2``: minus the episode's mean feature (over its T steps; SimpleShot's
      centring, computed per episode so it follows the domain), then unit length;
    - ``l2``: unit length; ``none``: as they are.

    Then scaled by sqrt(D), so each component is of order 1, like pixels; with ``project`` > 0,
    a learned linear map to ``project`` values.
    """

    def __init__(self, feature_dim: int, norm: str = "center-l2", project: int = 0):
        super().__init__()
        self.feature_dim, self.norm = feature_dim, norm
        self.proj = nn.Linear(feature_dim, project) if project else None
        self.out_features = project or feature_dim

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.flatten(2)
        if self.norm != "none":
            if self.norm == "center-l2":
                x = x - x.mean(dim=1, keepdim=True)
            x = torch.nn.functional.normalize(x, dim=-1) * self.feature_dim ** 0.5
        return self.proj(x) if self.proj is not None else x


def build_encoder(cfg: Config) -> nn.Module:
    d = cfg.data
    if is_backbone(cfg.model.encoder):
        if cfg.model.feature_dim < 1:
            raise UserError(f"--encoder {cfg.model.encoder}: the feature width is not known yet (set at training)")
        return FeatureEncoder(cfg.model.feature_dim, cfg.model.feature_norm, cfg.model.feature_proj)
    if cfg.model.encoder == "conv":
        return ConvEncoder(d.channels, d.image_size)
    return LinearEncoder(d.channels, d.image_size)


def _init_lstm_bias(bias: torch.Tensor, hidden: int) -> None:
    with torch.no_grad():
        bias[hidden:2 * hidden].fill_(1.0)  # forget gate starts open


class MANN(nn.Module):
    """LSTM controller with an external memory (LRUA by default).

    The controller input at step t is [features(x_t), y_{t-1}, r_{t-1}]; the output layer
    sees [h_t, r_t]. The input part of the LSTM gates is computed for all steps in one
    matmul before the recurrence.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.encoder = build_encoder(cfg)
        self.hidden = m.controller_size
        self.memory = build_memory(m)
        in_size = self.encoder.out_features + cfg.episodes.label_size
        self.input_proj = nn.Linear(in_size, 4 * self.hidden)
        self.recurrent = nn.Linear(self.hidden + self.memory.read_size, 4 * self.hidden, bias=False)
        self.output = nn.Linear(self.hidden + self.memory.read_size, cfg.episodes.label_size)
        _init_lstm_bias(self.input_proj.bias, self.hidden)
        # LRUA runs through fast.lrua_sequence (same maths, hand-written BPTT); set
        # False for the step-by-step autograd path below (a second reference).
        self.fast = True
        # Opt-in (--compile): training runs the recurrence through torch.compile'd
        # whole-sequence graphs (compiled.py; same maths), falling back to fast.py.
        self.compile = m.compile
        # On CPU the fast path runs the C++ kernel (cpp.py, csrc/lrua.cpp; same maths),
        # built on first use; set False (or FEWSHOT_MANN_CPP=0) for fast.py. Where it
        # cannot be built or loaded, one warning and fast.py.
        self.cpp = True

    def lstm_cell(self, gates: torch.Tensor, c: torch.Tensor):
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        batch = images.shape[0]
        feats = self.encoder(images)
        if self.fast and type(self.memory) is LRUAMemory:
            return self._forward_fast(feats, label_inputs)
        gates_in = self.input_proj(torch.cat([feats, label_inputs], dim=-1))  # (B,T,4H)
        h = gates_in.new_zeros(batch, self.hidden)
        c = gates_in.new_zeros(batch, self.hidden)
        state = self.memory.initial_state(batch, device=images.device, dtype=gates_in.dtype)
        reads = state[-1]
        outs = []
        # The recurrent weight's gradient: one matmul over all steps (deferred.py).
        recurrent = DeferredWeight(self.recurrent.weight)
        # unbind, not gates_in[:, t]: indexing makes every step's backward allocate a
        # gradient the size of the whole sequence.
        for g_t in gates_in.unbind(1):
            h, c = self.lstm_cell(g_t + recurrent.linear(torch.cat([h, reads], dim=-1)), c)
            reads, state = self.memory.step(h, state)
            outs.append(torch.cat([h, reads], dim=-1))
        return self.output(torch.stack(outs, dim=1))

    def _forward_fast(self, feats: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        """feats (B,T,F), label_inputs (B,T,L) -> logits (B,T,L), through fast.lrua_sequence or its
        C++ kernel (cpp.py), time-major."""
        from fewshot_mann.memory.lrua.sequence import INFERENCE_CHUNK, lrua_sequence

        needs_grad = torch.is_grad_enabled() and (
            feats.requires_grad or any(p.requires_grad for p in self.parameters()))
        if feats.shape[0] > INFERENCE_CHUNK and feats.device.type == "cpu" and not needs_grad:
            # CPU evaluation: episodes are independent; chunks keep a step's tensors in cache.
            return torch.cat([self._forward_fast(f, y) for f, y in zip(
                feats.split(INFERENCE_CHUNK), label_inputs.split(INFERENCE_CHUNK))])
        mem = self.memory
        gates_in = self.input_proj(torch.cat([feats.transpose(0, 1), label_inputs.transpose(0, 1)], dim=-1))
        layers = [mem.key, mem.gate] + ([mem.strength] if mem.strength is not None else [])
        run = lrua_sequence
        if self.compile and needs_grad:
            from fewshot_mann.memory.lrua.compiled import compiled_lrua_sequence as run
        elif self.cpp and gates_in.device.type == "cpu":
            from fewshot_mann.memory.lrua.kernel import cpp_lrua_sequence as run  # fast.lrua_sequence where the kernel is off or unavailable
        hr = run(gates_in, self.recurrent.weight, torch.cat([l.weight for l in layers]),
                 torch.cat([l.bias for l in layers]), memory_slots=mem.memory_slots,
                 num_read_heads=mem.num_read_heads, usage_decay=mem.usage_decay,
                 key_strength=mem.strength is not None)  # (T,B,H+R*W)
        return self.output(hr).transpose(0, 1).contiguous()


class LSTMBaseline(nn.Module):
    """The paper's LSTM baseline: no external memory."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder = build_encoder(cfg)
        hidden = cfg.model.controller_size
        self.lstm = nn.LSTM(self.encoder.out_features + cfg.episodes.label_size, hidden, batch_first=True)
        self.output = nn.Linear(hidden, cfg.episodes.label_size)
        _init_lstm_bias(self.lstm.bias_ih_l0, hidden)

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(torch.cat([self.encoder(images), label_inputs], dim=-1))
        return self.output(out)


class FeedForward(nn.Module):
    """The paper's feed-forward baseline: sees only the current step (at chance by design)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder = build_encoder(cfg)
        hidden = cfg.model.controller_size
        self.net = nn.Sequential(
            nn.Linear(self.encoder.out_features + cfg.episodes.label_size, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, cfg.episodes.label_size),
        )

    def forward(self, images: torch.Tensor, label_inputs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self.encoder(images), label_inputs], dim=-1))


def build_memory(m: ModelConfig) -> nn.Module:
    """The external memory named by ``m.model``: mann = LRUA, ntm = NTM, dnc = DNC."""
    if m.model == "ntm":
        from fewshot_mann.memory.ntm.equations import NTMMemory
        return NTMMemory(m.controller_size, m.memory_slots, m.memory_width, m.num_read_heads,
                         m.num_write_heads, m.shift_range)
    if m.model == "dnc":
        from fewshot_mann.memory.dnc.equations import DNCMemory
        return DNCMemory(m.controller_size, m.memory_slots, m.memory_width, m.num_read_heads)
    return LRUAMemory(m.controller_size, m.memory_slots, m.memory_width, m.num_read_heads,
                      m.usage_decay, m.key_strength)


def _transformer(cfg: Config) -> nn.Module:
    from fewshot_mann.models.transformer import TransformerBaseline  # imports this module's encoders
    return TransformerBaseline(cfg)


def _keyed(cfg: Config) -> nn.Module:
    from fewshot_mann.models.keyed import KeyedMemory
    return KeyedMemory(cfg)


# ntm and dnc are the MANN controller with another memory (build_memory picks it).
MODEL_CLASSES = {"mann": MANN, "ntm": MANN, "dnc": MANN, "lstm": LSTMBaseline, "ff": FeedForward,
                 "transformer": _transformer, "keyed": _keyed}


def build_model(cfg: Config) -> nn.Module:
    return MODEL_CLASSES[cfg.model.model](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
