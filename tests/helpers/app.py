"""What the web app's tests share: tiny untrained checkpoints (pixels; timm's test backbone) and a flat
folder of cases."""
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


def tiny_backbone_checkpoint(path: Path) -> Path:
    """An untrained 3-way checkpoint reading features of timm's tiny ``test_efficientnet`` (random weights)."""
    from fewshot_mann.models.features import weights_id

    cfg = tiny_config()
    cfg.data.dataset, cfg.data.channels = "folder", 3
    cfg.model.encoder, cfg.model.encoder_weights = "timm:test_efficientnet", "none"
    cfg.model.weights_hash, cfg.model.feature_dim = weights_id(cfg.model) or "", 256
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
