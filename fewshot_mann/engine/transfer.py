"""``--init-from``: start a model from a trained checkpoint's weights, adapting what can be adapted.

Fine-tuning a meta-learned model on custom classes often changes the input: Omniglot
checkpoints read 20x20 grayscale, a folder of photos may be trained at 32x32 RGB.

- Tensors whose name and shape match are copied.
- Input layer with the paper's linear encoder (one weight per pixel and channel, the first
  ``C*S*S`` columns of the first layer, followed by the label columns): each old pixel's
  weight is shared among the new pixels it overlaps (by area), so a uniform image gives
  the same pre-activation at the new size; grayscale -> RGB gives each colour channel a
  third of the grey weight (a grey picture then gives the same pre-activation), RGB ->
  grayscale sums them. The label columns are copied when the label size is the same.
- A conv encoder's first convolution is mapped between 1 and 3 input channels the same way;
  its first dense layer keeps the label columns but re-initialises the feature columns if
  the feature map size changed with the image size.
- Everything else whose shape differs (output layer when ``--ways``/``--labels`` differ)
  keeps its fresh initialisation, and is named in the report.

``transfer_weights`` returns the lines that tell the user what happened.
"""
from __future__ import annotations

import torch

from fewshot_mann.config import Config, is_backbone
from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, refuse_nonfinite
from fewshot_mann.errors import UserError


def _channel_map(weight: torch.Tensor, c_from: int, c_to: int, dim: int) -> torch.Tensor:
    """Map ``dim`` of ``weight`` from c_from to c_to channels (1 <-> 3), preserving grey responses."""
    if c_from == c_to:
        return weight
    if c_from == 1 and c_to == 3:
        return torch.cat([weight / 3.0] * 3, dim=dim)
    if c_from == 3 and c_to == 1:
        return weight.sum(dim=dim, keepdim=True)
    raise ValueError(f"cannot map {c_from} to {c_to} channels")


def overlap_matrix(size: int, new_size: int) -> torch.Tensor:
    """(new_size, size): the share of old pixel i (length 1) covered by new pixel j; columns sum to 1."""
    edges_old = torch.arange(size + 1, dtype=torch.float64)
    edges_new = torch.arange(new_size + 1, dtype=torch.float64) * (size / new_size)
    lo = torch.maximum(edges_new[:-1, None], edges_old[None, :-1])
    hi = torch.minimum(edges_new[1:, None], edges_old[None, 1:])
    return (hi - lo).clamp_min(0)


def resample_pixel_weights(weight: torch.Tensor, channels: int, size: int, new_channels: int,
                           new_size: int) -> torch.Tensor:
    """(out, channels*size*size) pixel weights -> (out, new_channels*new_size*new_size).

    Each old pixel's weight is shared among the new pixels it overlaps, in proportion to the
    overlap (separable in rows and columns), so a uniform image gives exactly the same
    pre-activation at the new size; then channels are mapped as in ``_channel_map``.
    """
    out = weight.shape[0]
    w = weight.reshape(out, channels, size, size).double()
    if new_size != size:
        m = overlap_matrix(size, new_size)
        w = torch.einsum("yi,xk,ocik->ocyx", m, m, w)
    w = _channel_map(w, channels, new_channels, dim=1)
    return w.reshape(out, -1).to(weight.dtype)


def _describe(cfg: Config) -> str:
    d = cfg.data
    return f"{d.image_size}x{d.image_size} {'grayscale' if d.channels == 1 else 'RGB'}"


def _input_layer(value: torch.Tensor, target: torch.Tensor, src_cfg: Config, cfg: Config, src: tuple[int, int],
                 dst: tuple[int, int], linear: bool) -> tuple[torch.Tensor, str]:
    """(the first dense layer's weights for this run, how they were adapted): its columns are
    [features | labels], ``src`` and ``dst`` their (features, labels) widths in the checkpoint and here."""
    (f_src, l_src), (f_dst, l_dst) = src, dst
    w = target.clone()
    if f_src == f_dst:
        w[:, :f_dst] = value[:, :f_src]
        how = "feature columns copied"
    elif linear:
        w[:, :f_dst] = resample_pixel_weights(value[:, :f_src], src_cfg.data.channels, src_cfg.data.image_size,
                                              cfg.data.channels, cfg.data.image_size)
        how = "pixel weights resampled"
    else:
        how = "feature columns re-initialised (the feature map size changed with the image size)"
    if l_src == l_dst:
        w[:, f_dst:] = value[:, f_src:]
        how += "; label columns copied"
    else:
        how += "; label columns re-initialised"
    return w, how


def transfer_weights(model: torch.nn.Module, cfg: Config, src_state: dict, src_cfg: Config,
                     source: str = "the checkpoint") -> list[str]:
    """Load what fits of ``src_state`` (a ``src_cfg`` model) into ``model`` (a ``cfg`` model).

    Returns human-readable report lines; raises ``UserError`` if nothing fits.
    """
    if src_cfg.model.model != cfg.model.model:
        raise UserError(f"--init-from {source} holds a {src_cfg.model.model!r} model but this run trains "
                        f"--model {cfg.model.model}; use the same --model")
    own = model.state_dict()
    new = dict(own)
    copied, adapted, fresh, kept = [], [], [], []
    # a conv4 encoder loaded from --encoder-weights (backbones.load_trainable_encoder) keeps those weights
    from fewshot_mann.models.backbones import trainable_encoder_file
    from_file = trainable_encoder_file(cfg.model) is not None
    linear = cfg.model.encoder == "linear" and src_cfg.model.encoder == "linear"
    from fewshot_mann.models.encoders import build_encoder
    f_src, f_dst = build_encoder(src_cfg).out_features, build_encoder(cfg).out_features
    l_src, l_dst = src_cfg.episodes.label_size, cfg.episodes.label_size
    # a backbone model read features (its images were the backbone's size), not images of data.image_size
    input_changed = not is_backbone(src_cfg.model.encoder) and (
        (src_cfg.data.image_size, src_cfg.data.channels) != (cfg.data.image_size, cfg.data.channels))
    for name, target in own.items():
        value = src_state.get(name)
        if value is None and from_file and name.startswith("encoder.backbone."):
            kept.append(name)
            continue
        if value is None:
            fresh.append((name, "not in the checkpoint"))
            continue
        if value.shape == target.shape:
            new[name] = value.to(target.dtype)
            copied.append(name)
            continue
        # The first dense layer: [features | labels] columns, features first in every model.
        is_input_layer = (value.ndim == 2 and target.ndim == 2 and value.shape[0] == target.shape[0]
                          and value.shape[1] == f_src + l_src and target.shape[1] == f_dst + l_dst)
        if is_input_layer:
            new[name], how = _input_layer(value, target, src_cfg, cfg, (f_src, l_src), (f_dst, l_dst), linear)
            adapted.append((name, how))
            continue
        # A conv encoder's first convolution: (out, channels, k, k).
        if (value.ndim == 4 and target.ndim == 4 and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:] and {value.shape[1], target.shape[1]} == {1, 3}):
            new[name] = _channel_map(value, value.shape[1], target.shape[1], dim=1).to(target.dtype)
            adapted.append((name, f"mapped from {value.shape[1]} to {target.shape[1]} input channels"))
            continue
        fresh.append((name, f"shape {tuple(value.shape)} in the checkpoint, {tuple(target.shape)} here"))
    if not copied and not adapted:
        raise UserError(f"--init-from {source}: no weights fit this model (is it the same --model and size?)")
    model.load_state_dict(new)
    summary = (f"initialised from {source}: {len(copied)} of {len(own)} tensors copied"
               + (f", {len(adapted)} adapted" if adapted else "") + (f", {len(fresh)} re-initialised" if fresh else "")
               + (f", {len(kept)} kept from --encoder-weights" if kept else ""))
    return [summary, *_report(cfg, src_cfg, input_changed, linear, adapted, fresh)]


def _report(cfg: Config, src_cfg: Config, input_changed: bool, linear: bool, adapted: list, fresh: list) -> list[str]:
    """``transfer_weights``' lines after its summary: how the input changed, each adapted and re-initialised tensor."""
    lines = []
    if input_changed:
        lines.append(f"input adapted: the checkpoint reads {_describe(src_cfg)} images, this run {_describe(cfg)}; "
                     + ("pixel weights were resampled and mapped between channels (fine-tuning adapts them further)"
                        if linear else "see the adapted tensors below"))
    for name, why in adapted:
        lines.append(f"  adapted {name}: {why}")
    l_src, l_dst = src_cfg.episodes.label_size, cfg.episodes.label_size
    if l_src != l_dst:
        lines.append(f"labels differ: the checkpoint answers with {l_src} label units "
                     f"({src_cfg.episodes.ways}-way {src_cfg.episodes.labels}), this run {l_dst} "
                     f"({cfg.episodes.ways}-way {cfg.episodes.labels}); the output layer starts fresh")
    for name, why in fresh:
        lines.append(f"  re-initialised {name}: {why}")
    return lines


def load_init_source(path: str) -> dict:
    """The ``--init-from`` checkpoint, read and checked whole (weights fit their own config and
    are finite) before the run folder is touched."""
    src = load_checkpoint(path)
    load_model_from_checkpoint(src)  # its weights must fit its own config, or the file is damaged
    refuse_nonfinite(src, path)
    return src


def load_matching_weights(model: torch.nn.Module, path: str, log, cfg: Config, src: dict | None = None) -> dict:
    """Start from another checkpoint's weights: copied where names and shapes match, input
    weights adapted to a new image size/channels, the rest re-initialised (``transfer.py``).

    Returns the run's origin, ``{"checkpoint": path, "episodes": n}``, n counting every
    episode behind those weights (the source's own and its origins'), for honest reports."""
    if src is None:
        src = load_init_source(path)
    for line in transfer_weights(model, cfg, src["model"], src["config_obj"], source=str(path)):
        log(line)
    before = src.get("init_from") if isinstance(src.get("init_from"), dict) else {}
    episodes = src.get("episodes_done") if isinstance(src.get("episodes_done"), int) else 0
    prior = before.get("episodes") if isinstance(before.get("episodes"), int) else 0
    return {"checkpoint": str(path), "episodes": episodes + prior}
