"""Dataset dispatch: a config's data section -> (train bank, test bank).

With a backbone encoder (``--encoder timm:NAME``) the banks hold the backbone's features
(N, D) float32 instead of images (``features.py``); ``pixel_banks`` gives the same
images as small raw pixels, in the same order, for the raw-pixel baseline.
"""
from __future__ import annotations

import numpy as np

from .bank import ClassBank
from .config import Config, is_backbone
from .errors import UserError

RAW_BASELINE_SIZE = 32  # raw-pixel baseline of backbone runs: images averaged down to 32 x 32


def reader_settings(cfg: Config) -> dict:
    """How the folder reader decodes images for ``cfg``: image_size, channels, resize, polarity.

    Raw-pixel encoders read the configured size/channels with ``data.polarity``; a backbone
    reads RGB at its own input size, the photo as it is (ImageNet features know light
    backgrounds)."""
    d = cfg.data
    if is_backbone(cfg.model.encoder):
        from .backbones import preprocessing
        return {"image_size": preprocessing(cfg.model.encoder).image_size, "channels": 3, "resize": d.resize,
                "polarity": "keep"}
    return {"image_size": d.image_size, "channels": d.channels, "resize": d.resize, "polarity": d.polarity}


def load_image_banks(cfg: Config, progress: bool = True) -> tuple[ClassBank, ClassBank]:
    """Train and held-out banks of decoded images (disjoint classes), without rotations."""
    d = cfg.data
    if d.dataset == "omniglot":
        from .omniglot import load_omniglot, load_split, split_banks
        if is_backbone(cfg.model.encoder):
            raise UserError("a backbone encoder reads image folders (--dataset folder); to meta-train on Omniglot "
                            "through it, write Omniglot characters as PNG folders first "
                            "(fewshot_mann.omniglot.write_png_folder)")
        load_split(d.split)  # a bad split fails before the decode
        if d.channels != 1:
            raise UserError("Omniglot is grayscale: use --channels 1")
        bank = load_omniglot(d.data_root, d.image_size, progress=progress)
        return split_banks(bank, d.split)
    if d.dataset == "folder":
        from .folder import load_folder_banks
        return load_folder_banks(cfg, progress=progress)
    raise UserError(f"unknown dataset {d.dataset!r}")


def shrink(bank: ClassBank, size: int = RAW_BASELINE_SIZE) -> ClassBank:
    """The bank's images averaged down to ``size`` px (raw-pixel baselines of big inputs)."""
    s = bank.images.shape[-1]
    if s <= size or s % size:
        return bank
    f = s // size
    n, c = bank.images.shape[:2]
    small = bank.images.reshape(n, c, size, f, size, f).mean(axis=(3, 5)).round().astype(np.uint8)
    return ClassBank(small, bank.offsets, bank.counts, bank.names)


def load_banks(cfg: Config, progress: bool = True, *, feature_cache: bool = True,
               with_pixels: bool = False):
    """Train and held-out class banks (disjoint classes), without rotations: images, or a
    backbone's features for a backbone encoder. ``with_pixels``: also the two banks as raw
    pixels in the same order, ``(train, test, train_pixels, test_pixels)``."""
    if is_backbone(cfg.model.encoder):
        from .features import embed_bank, resolve_weights
        digest = resolve_weights(cfg.model, trained=bool(cfg.model.weights_hash))
    train, test = load_image_banks(cfg, progress)
    if not is_backbone(cfg.model.encoder):
        return (train, test, train, test) if with_pixels else (train, test)
    kw = dict(digest=digest, cache=feature_cache, progress=progress)
    train_f = embed_bank(train, cfg.model, **kw) if train.num_classes else \
        ClassBank(np.zeros((0, 1), np.float32), train.offsets, train.counts, train.names)
    test_f = embed_bank(test, cfg.model, **kw)
    if with_pixels:
        return train_f, test_f, shrink(train), shrink(test)
    return train_f, test_f
