"""Checkpoints: atomic saves, safe loads (``weights_only=True``), clear errors.

A checkpoint is a dict of plain types and tensors:
``{"format": "fewshot-mann", "version": 2, "config": {...}, "model": state_dict,
"optimizer": state_dict | None, "step": int, "episodes_done": int, ...}``.
"""
from __future__ import annotations

import os
import pickle
import sys
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from fewshot_mann.config import OBSOLETE_KEYS, Config
from fewshot_mann.errors import CheckpointError, UserError
from fewshot_mann.fileio import atomic_write

FORMAT = "fewshot-mann"
VERSION = 2
# Bounds on what a loaded checkpoint may expand to before anything walks it. Nodes are counted
# as a walk would meet them: a list shared a million times counts a million times (a "billion
# laughs" file is small on disk because the unpickler shares references). A real checkpoint has
# a few thousand nodes and a depth of 5.
MAX_CHECKPOINT_BYTES = 4 * 2**30
MAX_NODES = 200_000
MAX_DEPTH = 32
MAX_COMMAND_ITEMS = 10_000
MAX_TEXT = 65_536  # characters of one string in a checkpoint


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def _drop_obsolete_config_keys(ckpt: dict) -> dict:
    """1 -> 2: the config's ``model.compile`` (the removed torch.compile path) is dropped;
    which implementation runs is ``model.memory_backend`` now (absent: ``auto``, what a
    version-1 model ran as). The weights are unchanged."""
    config = ckpt.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        model = {k: v for k, v in config["model"].items() if k not in OBSOLETE_KEYS["model"]}
        ckpt = {**ckpt, "config": {**config, "model": model}}
    return ckpt


# version -> function that rewrites a checkpoint of that version into version + 1.
MIGRATIONS: dict = {1: _drop_obsolete_config_keys}


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
    from fewshot_mann.engine.bundled import names_hint, resolve_checkpoint

    path = resolve_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist{names_hint()}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the .pt file (e.g. {path / 'checkpoint.pt'})")
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: never opened
        raise CheckpointError(f"checkpoint {path} is not a regular file (a device, FIFO or socket)")
    if st.st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if st.st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint {path} is {st.st_size:,} bytes, over the {MAX_CHECKPOINT_BYTES:,}-byte "
                              "limit (a fewshot-mann checkpoint is a few MB); not read")
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
    from fewshot_mann.models.registry import check_size
    try:
        check_size(ckpt["config_obj"])
    except UserError as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid config: {exc}") from exc
    _forget_absent_omniglot_root(ckpt["config_obj"])
    _weights_beside(ckpt["config_obj"], path)
    return ckpt


def _weights_beside(cfg: Config, path: Path) -> None:
    """A backbone weights file recorded at a path that is not here (a run directory on another
    machine) is looked for beside the checkpoint: under the same name, else as any ``.pt`` file
    there with the recorded sha256. A published checkpoint travels with its weights file; the
    weights' sha256 is checked against the recorded one either way."""
    from fewshot_mann.config import is_backbone
    from fewshot_mann.models.backbones import file_sha256

    m = cfg.model
    if not is_backbone(m.encoder) or m.encoder_weights in ("imagenet", "none"):
        return
    recorded = Path(m.encoder_weights).expanduser()
    if recorded.is_file():
        return
    folder = Path(path).parent
    candidates = [folder / recorded.name] + sorted(p for p in folder.glob("*.pt") if p.name != recorded.name)
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve() != Path(path).resolve() and (
                candidate.name == recorded.name or (m.weights_hash and file_sha256(candidate) == m.weights_hash)):
            m.encoder_weights = str(candidate)
            return


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

    problem = structure_problem(ckpt)
    if problem:
        bad(problem)
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
    command = ckpt.get("command")
    if command is not None and (not isinstance(command, list) or len(command) > MAX_COMMAND_ITEMS
                                or not all(isinstance(c, str) for c in command)):
        bad("command is not a list of strings")
    if ckpt.get("init_from") is not None and not isinstance(ckpt["init_from"], dict):
        bad("init_from is not a mapping")
    from fewshot_mann.data import image_record
    if ckpt.get(image_record.KEY) is not None and image_record.problem(ckpt[image_record.KEY]):
        bad(image_record.problem(ckpt[image_record.KEY]))


def structure_problem(obj, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``obj`` (a loaded checkpoint) is too large or deep to walk, or None. Iterative (no
    recursion) and stops at the bound, so a hostile structure costs at most ``max_nodes`` steps.
    Tensors are leaves; strings count and must be shorter than ``MAX_TEXT``."""
    stack = [(obj, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return f"more than {max_nodes:,} nested values (a structure that expands when read)"
        if depth > max_depth:
            return f"values nested more than {max_depth} levels deep"
        if isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((value, depth + 1) for value in item)
        elif isinstance(item, str) and len(item) > MAX_TEXT:
            return f"a string of {len(item):,} characters (at most {MAX_TEXT:,})"
    return None


def nonfinite_weights(weights: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [name for name, t in weights.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def refuse_nonfinite(ckpt: dict, path) -> None:
    """``CheckpointError`` if the checkpoint's weights are not all finite (such a model answers
    nothing meaningful: every output is NaN)."""
    bad = nonfinite_weights(ckpt["model"])
    if bad:
        raise CheckpointError(f"checkpoint {path} has non-finite weights (NaN or inf in {len(bad)} tensor(s), "
                              f"e.g. {bad[0]}); it cannot give answers; use an earlier checkpoint")


def warn_nonfinite(ckpt: dict, path) -> bool:
    """Print a warning if the checkpoint's weights are not all finite; True if it did."""
    import sys

    bad = nonfinite_weights(ckpt["model"])
    if bad:
        print(f"warning: checkpoint {path} has non-finite weights (NaN or inf in {len(bad)} tensor(s), e.g. "
              f"{bad[0]}): its outputs are meaningless and its accuracy is not a measurement", file=sys.stderr)
    return bool(bad)


def check_weights_fit(cfg: Config, weights: dict, where) -> None:
    """``CheckpointError`` if ``weights`` do not have the names and shapes of ``cfg``'s model,
    found by building it on the meta device: nothing is allocated, so a config asking for a
    huge model is refused before any memory is taken."""
    from fewshot_mann.models.registry import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg)
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: the real build and load decide
        return
    got = {k: tuple(v.shape) for k, v in weights.items()}
    optional = getattr(model, "OPTIONAL_WEIGHTS", ())  # tensors a checkpoint may leave out (the model fills them)
    shapes = {k: v for k, v in shapes.items() if k in got or k not in optional}
    if shapes != got:
        missing = sorted(set(shapes) - set(got))
        extra = sorted(set(got) - set(shapes))
        wrong = sorted(k for k in set(shapes) & set(got) if shapes[k] != got[k])
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                  f"{wrong[0]} has shape {got[wrong[0]]}, the config's model needs {shapes[wrong[0]]}")
        raise CheckpointError(f"{where + ': ' if where else ''}checkpoint weights do not fit a "
                              f"{cfg.model.model} model of its config ({detail})")


def load_model_from_checkpoint(ckpt: dict, device="cpu"):
    """Build the model named by the checkpoint's config and load its weights."""
    from fewshot_mann.models.registry import build_model

    cfg = ckpt["config_obj"]
    check_weights_fit(cfg, ckpt["model"], None)
    try:
        model = build_model(cfg)
    except (MemoryError, RuntimeError) as exc:
        from fewshot_mann.errors import first_line, is_allocation_error
        if not is_allocation_error(exc):
            raise
        # the size comes from the checkpoint's config: no option of this command changes it
        raise CheckpointError(f"not enough memory to build the checkpoint's {cfg.model.model} model "
                              f"({first_line(exc)})") from exc
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint weights do not fit a {cfg.model.model} model: "
                              f"{str(exc).splitlines()[0][:200]}") from exc
    return model.to(device)
