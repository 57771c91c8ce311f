"""Checkpoints: atomic saves, safe loads (``weights_only=True``), clear errors.

A checkpoint is a dict of plain types and tensors:
``{"format": "fewshot-mann", "version": 1, "config": {...}, "model": state_dict,
"optimizer": state_dict | None, "step": int, "episodes_done": int, ...}``.
"""
from __future__ import annotations

import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import CheckpointError, UserError
from .fileio import atomic_write

FORMAT = "fewshot-mann"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


# version -> function that rewrites a checkpoint of that version into version + 1.
# Version 1 is the first published format, so there is nothing to migrate yet.
MIGRATIONS: dict = {}


def migrate(ckpt: dict) -> dict:
    """Bring an older checkpoint format up to ``VERSION``, or refuse it with the reason."""
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError("it has no format version (not written by fewshot-mann's save_checkpoint)")
    if version > VERSION:
        raise CheckpointError(
            f"format version {version} is newer than this fewshot-mann understands ({VERSION}); upgrade fewshot-mann")
    while version < VERSION:
        if version not in MIGRATIONS:
            raise CheckpointError(f"format version {version} is older than any this fewshot-mann can migrate "
                                  f"(oldest: {min(MIGRATIONS, default=VERSION)}); retrain or use the release that wrote it")
        ckpt = MIGRATIONS[version](ckpt)
        version = ckpt["version"] = version + 1
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and validate a checkpoint; never executes code from the file.

    ``path`` may name a bundled model (``bundled.py``); an existing path wins over a name."""
    from .bundled import names_hint, resolve_checkpoint

    path = resolve_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist{names_hint()}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the .pt file (e.g. {path / 'checkpoint.pt'})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError, AttributeError, KeyError, IndexError, TypeError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: not a valid fewshot-mann checkpoint "
                              f"(corrupt, truncated or unsafe: {first[:200]})") from exc
    except Exception as exc:  # any other failure inside the unpickler is still the file's fault
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fewshot-mann checkpoint (a .pt file of something else)")
    try:
        ckpt = migrate(ckpt)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    check_structure(ckpt, path)
    try:
        ckpt["config_obj"] = Config.from_dict(ckpt["config"])
    except (UserError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid config: {exc}") from exc
    _forget_absent_omniglot_root(ckpt["config_obj"])
    return ckpt


def _forget_absent_omniglot_root(cfg: Config) -> None:
    """An Omniglot data root recorded on another machine (or a moved copy) is not an error:
    the images are the same everywhere, so fall back to the default (FEWSHOT_MANN_DATA, the
    download location, or the embedded copy) and say so. Folder data roots stay as recorded."""
    root = cfg.data.data_root
    if cfg.data.dataset == "omniglot" and root and not Path(root).expanduser().exists():
        print(f"note: the checkpoint's Omniglot data root {root} is not on this machine; "
              "using the default (--data-root, FEWSHOT_MANN_DATA, the download location or the embedded copy)",
              file=sys.stderr)
        cfg.data.data_root = None


def check_structure(ckpt: dict, path) -> None:
    """Every part the code will touch has the type it expects (a damaged or hand-made file
    must fail here with one line, not later with a traceback)."""
    def bad(what: str):
        raise CheckpointError(f"checkpoint {path} is damaged: {what}")

    if not isinstance(ckpt.get("config"), dict):
        bad("no config mapping")
    model = ckpt.get("model")
    if not isinstance(model, dict) or not model:
        bad("no model weights")
    for key, value in model.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            bad(f"model entry {key!r} is not a named tensor")
    if ckpt.get("optimizer") is not None and not isinstance(ckpt["optimizer"], dict):
        bad("optimizer state is not a mapping")
    if ckpt.get("state") is not None and not isinstance(ckpt["state"], dict):
        bad("training state is not a mapping")
    for key in ("step", "episodes_done"):
        value = ckpt.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            bad(f"{key} is not a count")


def load_model_from_checkpoint(ckpt: dict, device="cpu"):
    """Build the model named by the checkpoint's config and load its weights."""
    from .models import build_model

    cfg = ckpt["config_obj"]
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint weights do not fit a {cfg.model.model} model: "
                              f"{str(exc).splitlines()[0][:200]}") from exc
    return model.to(device)
