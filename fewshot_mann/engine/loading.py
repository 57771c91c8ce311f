"""Dataset dispatch: a config's data section -> its training, validation and test classes.

The input pipeline is resolved once here (``models.inputs.image_reader``: the ``ImageReader``
and, for a backbone, the ``BackboneSpec``) and handed to the loaders of ``data/``. With a
backbone encoder (``--encoder timm:NAME``) the banks hold the backbone's features (N, D)
float32 instead of images (``models/features.py``); ``with_pixels`` also gives the same images
as small raw pixels, in the same order, for the raw-pixel baseline.

Privacy: ``feature_cache=False`` (``--no-feature-cache``) writes nothing derived from the
user's images: neither the feature cache nor the decode cache is read or written.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fewshot_mann.config import Config, is_backbone
from fewshot_mann.data.bank import ClassBank, FeatureBank, SplitBanks
from fewshot_mann.errors import UserError
from fewshot_mann.models.features import embed_bank, resolve_weights
from fewshot_mann.models.inputs import image_reader

RAW_BASELINE_SIZE = 32  # raw-pixel baseline of backbone runs: images averaged down to 32 x 32


def load_image_parts(cfg: Config, progress: bool = True, recorded: dict | None = None, *,
                     cache: bool = True) -> SplitBanks:
    """Training, validation and test banks of decoded images (pairwise disjoint), without rotations.

    ``recorded``: a checkpoint's class lists (folder datasets score those, see ``data/class_split.py``);
    ``cache``: the folder decode cache may be read and written (never for a backbone's large inputs)."""
    d = cfg.data
    if d.dataset == "omniglot":
        from fewshot_mann.data.omniglot import load_omniglot, load_split, split_parts
        if is_backbone(cfg.model.encoder) and not cfg.model.encoder.startswith("fewshot:"):
            raise UserError("a backbone encoder reads image folders (--dataset folder); to meta-train on Omniglot "
                            "through it, write Omniglot characters as PNG folders first "
                            "(fewshot_mann.data.omniglot.write_png_folder)")
        size = image_reader(cfg).image_size  # the configured size, or a grayscale backbone's own
        load_split(d.split)  # a bad split fails before the decode
        if d.channels != 1:
            raise UserError("Omniglot is grayscale: use --channels 1")
        bank = load_omniglot(d.data_root, size, progress=progress)
        parts = split_parts(bank, d.split)
        return SplitBanks(parts["train"], parts["validation"], parts["test"])
    if d.dataset == "folder":
        from fewshot_mann.data.class_split import load_folder_parts
        # a backbone's inputs are large and only feed the (cached) features: not cached themselves
        return load_folder_parts(cfg, image_reader(cfg), progress=progress, recorded=recorded,
                                 cache=cache and not is_backbone(cfg.model.encoder))
    raise UserError(f"unknown dataset {d.dataset!r}")


def no_cache(cache: bool) -> dict:
    """``load_image_parts``'s keywords for ``cache``: none where the cache is on (the call any stand-in takes)."""
    return {} if cache else {"cache": False}


def shrink(bank: ClassBank, size: int = RAW_BASELINE_SIZE) -> ClassBank:
    """The bank's images averaged down to ``size`` px (raw-pixel baselines of big inputs): each output pixel the
    mean of the input pixels its area covers (blocks of f x f where ``size`` divides the input size)."""
    if bank.images.shape[-1] <= size:
        return bank
    parts = [torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(bank.images[i:i + 256]).float(), size)
             for i in range(0, len(bank.images), 256)]
    small = torch.cat(parts).round().to(torch.uint8).numpy()
    return ClassBank(small, bank.offsets, bank.counts, bank.names)


def plain_pixels(cfg: Config, images: SplitBanks, progress: bool = True, recorded: dict | None = None, *,
                 cache: bool = True) -> SplitBanks:
    """The raw-pixel baselines' input: the images as read at the model's input size, without the polarity
    inversion or ink re-framing a raw-pixel model's folder reader applies (``images`` where it applies
    neither). The same classes and files, so the same trials draw the same rows."""
    d = cfg.data
    if d.dataset != "folder" or (d.polarity == "keep" and d.ink_frame == "keep"):
        return images
    plain_cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, polarity="keep", ink_frame="keep"))
    plain = load_image_parts(plain_cfg, progress, recorded, **no_cache(cache))
    for part in ("train", "validation", "test"):
        a, b = getattr(images, part), getattr(plain, part)
        if list(a.names) != list(b.names) or list(a.counts) != list(b.counts):
            raise UserError("the plain-pixel reading of this folder kept other images than the model's reading "
                            "(duplicates differ once re-framed); use --polarity keep --ink-frame keep")
    return plain


def load_split_banks(cfg: Config, progress: bool = True, recorded: dict | None = None, *,
                     feature_cache: bool = True, with_pixels: bool = False):
    """Training, validation and test class banks (pairwise disjoint), without rotations: images,
    or a backbone's features for a backbone encoder. ``with_pixels``: ``(parts, pixel_parts)``,
    the second the same images as raw pixels in the same order."""
    images = load_image_parts(cfg, progress, recorded, **no_cache(feature_cache))
    if not is_backbone(cfg.model.encoder):
        return (images, plain_pixels(cfg, images, progress, recorded, cache=feature_cache)) if with_pixels else images
    digest = resolve_weights(cfg.model, trained=bool(cfg.model.weights_hash))
    kw = dict(digest=digest, cache=feature_cache, progress=progress)

    def embed(bank: ClassBank) -> ClassBank:
        if bank.num_classes:
            return embed_bank(bank, cfg.model, **kw)
        return FeatureBank(np.zeros((0, 1), np.float32), bank.offsets, bank.counts, bank.names)

    feats = SplitBanks(embed(images.train), embed(images.validation), embed(images.test), images.digests)
    if with_pixels:  # a backbone that reads raw pixels (fewshot:conv4) may re-frame them: baselines read them plain
        plain = plain_pixels(cfg, images, progress, recorded, cache=feature_cache)
        pixels = dataclasses.replace(plain, train=shrink(plain.train), validation=shrink(plain.validation),
                                     test=shrink(plain.test))
        return feats, pixels
    return feats


def load_banks(cfg: Config, progress: bool = True, *, feature_cache: bool = True, with_pixels: bool = False):
    """Training and held-out test class banks (disjoint classes), without rotations; with
    ``with_pixels`` also the two as raw pixels: ``(train, test, train_pixels, test_pixels)``."""
    out = load_split_banks(cfg, progress, feature_cache=feature_cache, with_pixels=with_pixels)
    if with_pixels:
        parts, pixels = out
        return parts.train, parts.test, pixels.train, pixels.test
    return out.train, out.test
