"""What the web app's tests share: a tiny untrained checkpoint and a flat folder of cases."""
from __future__ import annotations

from pathlib import Path

from helpers import tiny_config
from fewshot_mann.engine.checkpoint import save_checkpoint
from fewshot_mann.engine.trainer import new_model


def tiny_checkpoint(path: Path) -> Path:
    cfg = tiny_config()
    cfg.data.dataset, cfg.data.image_size, cfg.data.channels = "folder", 8, 3
    cfg.episodes.ways, cfg.episodes.instances = 3, 4
    cfg.validate()
    save_checkpoint(path, {"config": cfg.to_dict(), "command": None, "model": new_model(cfg).state_dict(),
                           "optimizer": None, "step": 0, "episodes_done": 0})
    return path


def flat_cases(root: Path, out: Path) -> Path:
    """The cases as one flat folder (``<class>_<file>``: the class folders reuse file names)."""
    out.mkdir(exist_ok=True)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            (out / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    return out
