"""Backbone weights files and names, checked as checkpoints are (``backbones.py`` calls these).

A ``--encoder-weights PATH`` is read only if it is a regular file (a FIFO, a folder or a
device is named as such, never opened) of at most ``MAX_WEIGHTS_BYTES``, through
``torch.load(weights_only=True)``; it must be a mapping of text keys to finite tensors (a
``{"state_dict": ...}`` wrapper is unwrapped) that fits the architecture, name by name or in
order, shape by shape. Anything else is one line naming the file and the first thing wrong.
A ``torchvision:NAME`` must be one of torchvision's classification models (detection,
segmentation, video and optical-flow models have no single feature vector), and a backbone
whose output still has the 1,000 ImageNet classes (a head left on) is refused: those are
logits, not features.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

from fewshot_mann.errors import UserError

MAX_WEIGHTS_BYTES = 4 * 2**30  # the largest timm backbones are a few hundred MB
MAX_TENSORS = 100_000  # tensors in a state dict (a ViT-g has a few thousand)
IMAGENET_CLASSES = 1000


def weights_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a weights file (no such file, a folder, a FIFO, a device, too
    large), or None. Never opens it."""
    try:
        st = os.stat(Path(path).expanduser())
    except FileNotFoundError:
        return "no such file (give imagenet, none or a weights file)"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a weights file"
    if stat.S_ISFIFO(st.st_mode):
        return "is a FIFO (named pipe), not a weights file"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "is a device, not a weights file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size > MAX_WEIGHTS_BYTES:
        return f"is {st.st_size:,} bytes, over the {MAX_WEIGHTS_BYTES:,}-byte limit for a weights file"
    return None


def read_state(weights: str) -> dict:
    """The state dict in the weights file ``weights`` (see the module docstring); one-line
    ``UserError`` for anything that is not one."""
    where = f"--encoder-weights {weights}"
    problem = weights_file_problem(weights)
    if problem:
        raise UserError(f"{where}: {problem}")
    try:
        state = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure inside the unpickler is the file's
        raise UserError(f"{where}: not a readable weights file ({type(exc).__name__})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    check_state(state, where)
    return state


def check_state(state, where: str) -> None:
    """``UserError`` unless ``state`` maps text keys to finite, dense, real tensors in memory (not on
    the ``meta`` device, sparse, complex or quantized; at most ``MAX_TENSORS``)."""
    if not isinstance(state, dict):
        raise UserError(f"{where}: not a state dict (a mapping of tensor names to tensors)")
    if len(state) > MAX_TENSORS:
        raise UserError(f"{where}: {len(state):,} entries, more than a state dict has (limit {MAX_TENSORS:,})")
    for key, value in state.items():
        if not isinstance(key, str):
            raise UserError(f"{where}: not a state dict (key {key!r:.40} is not a tensor name)")
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{where}: not a state dict ({key:.80} is a {type(value).__name__}, not a tensor)")
        if value.layout != torch.strided or value.device.type != "cpu" or value.is_complex() or value.is_quantized:
            raise UserError(f"{where}: {key:.80} is not a plain tensor of real numbers (layout {value.layout}, "
                            f"device {value.device.type}, {value.dtype})")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{where}: {key:.80} holds NaN or infinite values; the features would be meaningless")


def load_strictly(model: torch.nn.Module, state: dict, where: str):
    """``model.load_state_dict(state, strict=False)`` with a shape mismatch as one line."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise UserError(f"{where} does not fit this architecture ({key:.80} has shape {tuple(value.shape)}, "
                            f"the model needs {tuple(own[key].shape)})")
    try:
        return model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"{where} does not fit this architecture ({str(exc).strip().splitlines()[0][:160]})") from exc


def check_torchvision_name(name: str) -> None:
    """``UserError`` unless ``name`` is a torchvision classification model."""
    import torchvision.models as models

    if name not in models.list_models(module=models):
        raise UserError(f"--encoder torchvision:{name} is not a torchvision classification model (detection, "
                        "segmentation, video and optical-flow models give no image feature vector); choose one of "
                        "torchvision.models.list_models(module=torchvision.models), e.g. torchvision:resnet18")


def refuse_logits(model: torch.nn.Module, encoder: str, size: int = 224) -> None:
    """``UserError`` if ``model`` still outputs the 1,000 ImageNet classes (its head was not removed)."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - a model that cannot read an image is no backbone
        raise UserError(f"--encoder {encoder}: the model does not read a {size} px RGB image "
                        f"({type(exc).__name__}); choose an image classification model") from exc
    if not isinstance(out, torch.Tensor) or out.flatten(1).shape[1] == IMAGENET_CLASSES:
        raise UserError(f"--encoder {encoder}: its output is the 1,000 ImageNet class scores, not features "
                        "(its head could not be removed); choose another backbone")
