"""Dataset dispatch: a config's data section -> its training, validation and test classes."""
from __future__ import annotations

from .bank import ClassBank, SplitBanks
from .config import Config
from .errors import UserError


def load_split_banks(cfg: Config, progress: bool = True, recorded: dict | None = None) -> SplitBanks:
    """Training, validation and test class banks (pairwise disjoint), without rotations.

    ``recorded``: a checkpoint's class lists (folder datasets score those, see ``folder``)."""
    d = cfg.data
    if d.dataset == "omniglot":
        from .omniglot import load_omniglot, load_split, split_parts
        load_split(d.split)  # a bad split fails before the decode
        if d.channels != 1:
            raise UserError("Omniglot is grayscale: use --channels 1")
        bank = load_omniglot(d.data_root, d.image_size, progress=progress)
        parts = split_parts(bank, d.split)
        return SplitBanks(parts["train"], parts["validation"], parts["test"])
    if d.dataset == "folder":
        from .folder import load_folder_parts
        return load_folder_parts(cfg, progress=progress, recorded=recorded)
    raise UserError(f"unknown dataset {d.dataset!r}")


def load_banks(cfg: Config, progress: bool = True) -> tuple[ClassBank, ClassBank]:
    """Training and held-out test class banks (disjoint classes), without rotations."""
    parts = load_split_banks(cfg, progress=progress)
    return parts.train, parts.test
