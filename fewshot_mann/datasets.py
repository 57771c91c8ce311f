"""Dataset dispatch: a config's data section -> (train bank, test bank)."""
from __future__ import annotations

from .bank import ClassBank
from .config import Config
from .errors import UserError


def load_banks(cfg: Config, progress: bool = True) -> tuple[ClassBank, ClassBank]:
    """Train and held-out class banks (disjoint classes), without rotations."""
    d = cfg.data
    if d.dataset == "omniglot":
        from .omniglot import load_omniglot, load_split, split_banks
        load_split(d.split)  # a bad split fails before the decode
        if d.channels != 1:
            raise UserError("Omniglot is grayscale: use --channels 1")
        bank = load_omniglot(d.data_root, d.image_size, progress=progress)
        return split_banks(bank, d.split)
    if d.dataset == "folder":
        from .folder import load_folder_banks
        return load_folder_banks(cfg, progress=progress)
    raise UserError(f"unknown dataset {d.dataset!r}")
