"""``fewshot-mann export RUN/checkpoint.pt OUT.pt`` (cli/export.py): a small, weights-only copy of a checkpoint.

Keeps the config, the command, the weights and the training counters; drops the
optimiser state (two thirds of a training checkpoint). It also keeps the class lists and, for
folder datasets, the record of the training images (``data/image_record.py``), which lets
evaluate refuse trained images as held out, and lets anyone holding an image test whether the
model trained on it; ``--without-image-record`` leaves the image record out. The result loads with
``torch.load(..., weights_only=True)`` and works with evaluate.py and predict.
"""
from __future__ import annotations

from fewshot_mann.engine.checkpoint import load_checkpoint, save_checkpoint
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import check_output_path, same_file
from fewshot_mann.engine.resume import valid_last_eval


def export_checkpoint(src, dst, image_record: bool = True) -> dict:
    """``image_record``: keep the record of the training images (the held-out check of
    ``evaluate``; it also lets anyone test whether an image was trained on)."""
    if same_file(src, dst):  # also a symbolic or hard link to it
        raise UserError(f"export {src} {dst}: the output is the checkpoint itself; a weights-only copy would "
                        "replace the resumable checkpoint; name another output file")
    check_output_path(dst, "export output")
    ckpt = load_checkpoint(src)
    state = ckpt.get("state") or {}
    small = {
        "config": ckpt["config"],
        "command": ckpt.get("command"),
        "model": {k: v.detach().clone().contiguous() for k, v in ckpt["model"].items()},
        "optimizer": None,
        "step": ckpt.get("step"),
        "episodes_done": ckpt.get("episodes_done"),
        **({"init_from": ckpt["init_from"]} if isinstance(ckpt.get("init_from"), dict) else {}),
        **{k: ckpt[k] for k in ("classes", "train_digests", "train_images") if k in ckpt
           and (image_record or k == "classes")},
        "state": {"train_seconds": state.get("train_seconds"), "episodes_done": state.get("episodes_done"),
                  "last_eval": state.get("last_eval") if valid_last_eval(state.get("last_eval")) else None},
    }
    save_checkpoint(dst, small)
    return small
