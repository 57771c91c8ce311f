"""Backbone features, computed once per image and cached.

``embed_bank(bank, model_cfg)`` turns a bank of decoded images (N, C, S, S) uint8 at the
backbone's input size into a bank of features (N, D) float32 in the same order; the
sequence models read those (``models.FeatureEncoder``), so meta-training over a frozen
backbone runs at the speed of the 20x20 model.

Cache: one file per (backbone, weights sha256, preprocessing) under
``omniglot.cache_dir()/features/``, mapping the sha256 of each decoded image (the file's
content after decoding, EXIF orientation and resizing, so the resize policy is part of
it) to its features. Only images not yet in it go through the backbone. The cache is
derived from the user's images (possibly patient data): ``fewshot-mann cache list``
shows it, ``fewshot-mann cache clear`` removes it, and ``--no-feature-cache`` neither
reads nor writes it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import ModelConfig
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import atomic_write
from fewshot_mann.data.omniglot import cache_dir

CACHE_VERSION = 1
BATCH = 32


def feature_cache_dir() -> Path:
    return cache_dir() / "features"


def weights_id(m: ModelConfig) -> str | None:
    """The sha256 of the backbone weights ``m`` names, known without building the backbone;
    None where the weights are not available here."""
    from fewshot_mann.models.backbones import OFFLINE_WEIGHTS, file_sha256, offline_weights_path, split_encoder

    lib, name = split_encoder(m.encoder)
    if m.encoder_weights == "none":
        return "none"
    if m.encoder_weights == "imagenet":
        if lib == "timm" and name in OFFLINE_WEIGHTS:
            path = offline_weights_path(name)
            return file_sha256(path) if path is not None else None
        return f"{lib}:{name}:imagenet"  # the library's own download, identified by name
    path = Path(m.encoder_weights).expanduser()
    return file_sha256(path) if path.is_file() else None


def resolve_weights(m: ModelConfig, *, trained: bool) -> str:
    """Check the backbone weights of ``m`` are available (and, for a trained checkpoint, the same
    as at training); returns their sha256. One-line ``UserError`` otherwise."""
    from fewshot_mann.models.backbones import missing_weights_message

    digest = weights_id(m)
    if digest is None:
        if not trained and m.encoder_weights not in ("imagenet", "none"):
            raise UserError(f"--encoder-weights {m.encoder_weights}: no such file (give imagenet, none or a weights file)")
        raise UserError(missing_weights_message(m))
    if trained and m.weights_hash and digest != m.weights_hash:
        raise UserError(f"the backbone weights here (sha256 {digest[:16]}) differ from the ones this checkpoint was "
                        f"trained on ({m.weights_hash[:16]}); its features would not match: use the same "
                        f"{m.encoder_weights} weights")
    return digest


def _cache_file(m: ModelConfig, digest: str) -> Path:
    from fewshot_mann.models.backbones import preprocessing

    key = json.dumps([CACHE_VERSION, m.encoder, digest, preprocessing(m.encoder).key()])
    return feature_cache_dir() / f"features-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            digests, feats = z["digests"], z["features"]
        if len(digests) != len(feats):
            return {}
        return dict(zip(digests.tolist(), feats))
    except Exception:  # noqa: BLE001 - absent, damaged or foreign: recomputed
        return {}


def _write_cache(path: Path, table: dict[str, np.ndarray], meta: dict) -> None:
    digests = np.asarray(list(table), dtype="<U64")
    feats = np.stack(list(table.values())).astype(np.float32)

    def write(f):
        np.savez(f, digests=digests, features=feats, meta=np.array(json.dumps(meta)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError:
        pass  # a read-only cache only costs the extraction next time


def image_digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


@torch.inference_mode()
def run_backbone(backbone: torch.nn.Module, images: np.ndarray, prep, *, progress: bool = True,
                 desc: str = "embedding", batch: int = BATCH,
                 memory_format: torch.memory_format = torch.channels_last) -> np.ndarray:
    """(N, C, S, S) uint8 -> (N, D) float32 through ``backbone`` (grayscale replicated to RGB).

    channels_last by default: 1.6-2.3x the images/s of the contiguous format for the convolutional
    backbones here (``bench --backbones``), the same features to float rounding."""
    backbone = backbone.to(memory_format=memory_format)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    out = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(images), desc=desc, unit="img", leave=False, file=sys.stderr)
    for first in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[first:first + batch])).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out.append(backbone(((x - mean) / std).contiguous(memory_format=memory_format)).float().flatten(1).numpy())
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_images(images: np.ndarray, m: ModelConfig, *, digest: str | None = None, cache: bool = True,
                 progress: bool = True, stats: dict | None = None) -> np.ndarray:
    """(N, C, S, S) uint8 decoded at the backbone's input size -> (N, D) float32 features.

    ``digest`` is the weights' sha256 (``resolve_weights``). With ``cache``, features of images
    seen before come from the cache and new ones are added to it.
    """
    from fewshot_mann.models.backbones import build_backbone, preprocessing

    digest = digest or resolve_weights(m, trained=False)
    prep = preprocessing(m.encoder)
    if len(images) and images.shape[-1] != prep.image_size:
        raise UserError(f"images are {images.shape[-1]} px; {m.encoder} reads {prep.image_size} px")
    keys = image_digests(images)
    path = _cache_file(m, digest)
    table = _read_cache(path) if cache and path.exists() else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in table}.values())
    t0 = time.perf_counter()
    if todo:
        backbone, _ = build_backbone(m.encoder, m.encoder_weights)
        feats = run_backbone(backbone, images[todo], prep, progress=progress,
                             desc=f"{m.encoder} features of {len(todo)} images (once)")
        table.update({keys[i]: f for i, f in zip(todo, feats)})
        if cache:
            _write_cache(path, table, {"encoder": m.encoder, "weights": m.encoder_weights, "weights_sha256": digest,
                                       "preprocessing": prep.key(), "created": time.strftime("%Y-%m-%d")})
    if stats is not None:
        stats.update({"computed": len(todo), "cached": len(keys) - len(set(keys[i] for i in todo)),
                      "seconds": time.perf_counter() - t0})
    if not keys:
        return np.zeros((0, m.feature_dim or 1), np.float32)
    return np.stack([table[k] for k in keys]).astype(np.float32)


def embed_bank(bank: ClassBank, m: ModelConfig, **kw) -> ClassBank:
    """The same classes and order, images replaced by (N, D) float32 features."""
    feats = embed_images(bank.images, m, **kw)
    return ClassBank(feats, bank.offsets.copy(), bank.counts.copy(), list(bank.names))


# ---------------------------------------------------------------------------- fewshot-mann cache

def cache_entries() -> list[tuple[str, Path, int]]:
    """(kind, path, bytes) of every cache file: decoded images and backbone features."""
    root = cache_dir()
    rows = []
    for kind, pattern in (("images", "omniglot-*.npz"), ("images", "folder-*.npz"), ("features", "features/*.npz")):
        for p in sorted(root.glob(pattern)):
            try:
                rows.append((kind, p, p.stat().st_size))
            except OSError:
                pass
    return rows


def describe_cache_file(kind: str, path: Path) -> str:
    """What a feature cache file holds (empty for an image cache; 'unreadable' if damaged)."""
    if kind != "features":
        return ""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            n = len(z["digests"])
        return f"{n} images, {meta.get('encoder')} {meta.get('weights')} ({str(meta.get('weights_sha256'))[:12]})"
    except Exception:  # noqa: BLE001 - any damage: listed as unreadable
        return "unreadable"


def clear_caches(features_only: bool = False) -> int:
    """Remove the cache files (``cache_entries``; only the feature caches with ``features_only``);
    returns how many. Downloaded datasets under the cache folder are never touched."""
    removed = 0
    for kind, path, _size in cache_entries():
        if features_only and kind != "features":
            continue
        try:
            os.unlink(path)
            removed += 1
        except OSError as exc:
            raise UserError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    return removed
