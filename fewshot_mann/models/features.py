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
shows it, ``fewshot-mann cache clear`` removes it (only the caches' own files:
``cache_files.py``), and ``--no-feature-cache`` neither reads nor writes it. An entry is used
only if the file names these weights and preprocessing, holds features of the backbone's width
and the row is finite; two processes filling one cache merge their work.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewshot_mann.config import ModelConfig, is_backbone
from fewshot_mann.data import cache_files
from fewshot_mann.data.bank import ClassBank, FeatureBank
from fewshot_mann.data.omniglot import cache_dir
from fewshot_mann.errors import UserError
from fewshot_mann.limits import MAX_FEATURE_DIM
from fewshot_mann.models.backbone_checks import weights_file_problem
from fewshot_mann.models.backbones import build_backbone, missing_weights_message, preprocessing
from fewshot_mann.models.inputs import BackboneSpec

CACHE_VERSION = 1
BATCH = 32


def feature_cache_dir() -> Path:
    return cache_dir() / "features"


def weights_id(m: ModelConfig) -> str | None:
    """The sha256 of the backbone weights ``m`` names, known without building the backbone;
    None where the weights are not available here (``BackboneSpec.weights_identity``)."""
    return BackboneSpec.of(m).weights_identity()


def resolve_weights(m: ModelConfig, *, trained: bool) -> str:
    """Check the backbone weights of ``m`` are available (and, for a trained checkpoint, the same
    as at training); returns their sha256. One-line ``UserError`` otherwise."""
    digest = weights_id(m)
    if digest is None:
        if not trained and m.encoder_weights not in ("imagenet", "none"):
            why = weights_file_problem(m.encoder_weights) or "no such file (give imagenet, none or a weights file)"
            raise UserError(f"--encoder-weights {m.encoder_weights}: {why}")
        raise UserError(missing_weights_message(m))
    if trained and m.weights_hash and digest != m.weights_hash:
        raise UserError(f"the backbone weights here (sha256 {digest[:16]}) differ from the ones this checkpoint was "
                        f"trained on ({m.weights_hash[:16]}); its features would not match: use the same "
                        f"{m.encoder_weights} weights")
    return digest


def embed_precision(m: ModelConfig) -> str:
    """``fp32`` or ``bf16``, resolved once from ``m.embed_precision``: ``auto`` is bf16 where the CPU computes
    it natively (avx512_bf16) for an ImageNet backbone (timm/torchvision; our own grayscale ``fewshot:``
    backbones stay float32), float32 elsewhere."""
    if m.embed_precision != "auto":
        return m.embed_precision
    return "bf16" if native_bf16() and is_backbone(m.encoder) and not m.encoder.startswith("fewshot:") else "fp32"


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16, as torch reports it)."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def _cache_file(m: ModelConfig, digest: str, precision: str = "fp32") -> Path:
    key = json.dumps([CACHE_VERSION, m.encoder, digest, preprocessing(m.encoder).key()]
                     + ([precision] if precision != "fp32" else [])  # fp32 files keep their names
                     + ([f"stages {m.feature_stages}"] if m.feature_stages else []))  # and head-only ones
    return feature_cache_dir() / f"features-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _read_cache(path: Path, meta: dict, width: int = 0) -> dict[str, np.ndarray]:
    """The usable entries of the feature cache ``path``: only a file the cache owns
    (``cache_files``) whose meta names these weights and preprocessing, whose features are one
    2-D float array (of ``width`` columns when known); rows that are not finite are dropped
    (recomputed). Anything else reads as empty, so it is recomputed and never used."""
    def expect(h):
        (dd, sd), (df, sf), (dm, sm) = h["digests"], h["features"], h["meta"]
        return (dd == np.dtype("<U64") and len(sd) == 1 and df.kind == "f" and len(sf) == 2 and sf[0] == sd[0]
                and 0 < sf[1] <= MAX_FEATURE_DIM and (not width or sf[1] == width) and dm.kind == "U" and sm == ()
                and dm.itemsize <= 2**20)
    z = cache_files.read(path, expect)
    try:
        saved = json.loads(str(z["meta"])) if z is not None else None
    except ValueError:
        saved = None
    if not isinstance(saved, dict) or not all(saved.get(k) == json.loads(json.dumps(meta[k]))
                                              for k in ("encoder", "weights_sha256", "preprocessing")) \
            or saved.get("precision", "fp32") != meta.get("precision", "fp32") \
            or saved.get("feature_stages", 0) != meta.get("feature_stages", 0):
        return {}
    digests, feats = z["digests"], z["features"]
    finite = np.isfinite(feats).all(axis=1)
    return dict(zip(digests[finite].tolist(), feats[finite]))


def _write_cache(path: Path, table: dict[str, np.ndarray], meta: dict) -> None:
    """Add ``table`` to the cache file: under a lock on the folder, what another process wrote
    meanwhile is read again and kept (entries of another width are not mixed in)."""
    with cache_files.folder_lock(path.parent):
        width = len(next(iter(table.values())))
        merged = {**_read_cache(path, meta, width), **table} if path.exists() else dict(table)
        digests = np.asarray(list(merged), dtype="<U64")
        feats = np.stack(list(merged.values())).astype(np.float32)

        def fill(f):
            np.savez(f, digests=digests, features=feats, meta=np.array(json.dumps(meta)))
        cache_files.write(path, fill)


def image_digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


@torch.inference_mode()
def run_backbone(backbone: torch.nn.Module, images: np.ndarray, prep, *, progress: bool = True,
                 desc: str = "embedding", batch: int = BATCH,
                 memory_format: torch.memory_format = torch.channels_last, precision: str = "fp32") -> np.ndarray:
    """(N, C, S, S) uint8 -> (N, D) float32 through ``backbone`` (grayscale replicated to RGB).

    channels_last by default: 1.6-2.3x the images/s of the contiguous format for the convolutional
    backbones here (``bench --backbones``), the same features to float rounding. ``precision`` bf16: under
    CPU autocast to bfloat16 (``embed_precision``), features returned as float32."""
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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = backbone(((x - mean) / std).contiguous(memory_format=memory_format))
        out.append(y.float().flatten(1).numpy())
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def feature_backbone(m: ModelConfig) -> torch.nn.Module:
    """The frozen module whose outputs are ``m``'s features: the backbone, reading its last
    ``m.feature_stages`` block stages beside its head where asked (``stages.stage_features``)."""
    from fewshot_mann.models.ensemble import with_stages

    return with_stages(build_backbone(m.encoder, m.encoder_weights)[0], m.feature_stages)


def embed_images(images: np.ndarray, m: ModelConfig, *, digest: str | None = None, cache: bool = True,
                 progress: bool = True, stats: dict | None = None) -> np.ndarray:
    """(N, C, S, S) uint8 decoded at the backbone's input size -> (N, D) float32 features.

    ``digest`` is the weights' sha256 (``resolve_weights``). With ``cache``, features of images
    seen before come from the cache and new ones are added to it.
    """
    digest = digest or resolve_weights(m, trained=False)
    prep = preprocessing(m.encoder)
    if len(images) and images.shape[-1] != prep.image_size:
        raise UserError(f"images are {images.shape[-1]} px; {m.encoder} reads {prep.image_size} px")
    keys = image_digests(images)
    precision = embed_precision(m)
    path = _cache_file(m, digest, precision)
    meta = {"encoder": m.encoder, "weights": m.encoder_weights, "weights_sha256": digest,
            "preprocessing": prep.key(), "precision": precision, "created": time.strftime("%Y-%m-%d"),
            **({"feature_stages": m.feature_stages} if m.feature_stages else {})}
    table = _read_cache(path, meta, m.feature_dim) if cache and path.exists() else {}
    t0 = time.perf_counter()
    backbone = None
    if table and not m.feature_dim:  # the width is not known yet: one image checks the cache's
        backbone = feature_backbone(m)
        if len(next(iter(table.values()))) != run_backbone(backbone, images[:1], prep, progress=False,
                                                           precision=precision).shape[1]:
            table = {}  # a cache of another width is never used (and is replaced below)
    todo = sorted({k: i for i, k in enumerate(keys) if k not in table}.values())
    if todo:
        backbone = backbone or feature_backbone(m)
        feats = run_backbone(backbone, images[todo], prep, progress=progress, precision=precision,
                             desc=f"{m.encoder} features of {len(todo)} images (once{', bfloat16' if precision == 'bf16' else ''})")
        fresh = {keys[i]: f for i, f in zip(todo, feats)}
        table.update(fresh)
        if cache:
            _write_cache(path, fresh, meta)
    if stats is not None:
        stats.update({"computed": len(todo), "cached": len(keys) - len(set(keys[i] for i in todo)),
                      "seconds": time.perf_counter() - t0})
    if not keys:
        return np.zeros((0, m.feature_dim or 1), np.float32)
    return np.stack([table[k] for k in keys]).astype(np.float32)


def embed_bank(bank: ClassBank, m: ModelConfig, **kw) -> FeatureBank:
    """The same classes and order, images replaced by (N, D) float32 features."""
    feats = embed_images(bank.images, m, **kw)
    return FeatureBank(feats, bank.offsets.copy(), bank.counts.copy(), list(bank.names))


# ---------------------------------------------------------------------------- fewshot-mann cache

def cache_entries() -> list[tuple[str, Path, int]]:
    """(kind, path, bytes) of every cache file the caches own (``cache_files``): decoded images,
    backbone features, and temporary files of writes that died halfway (kind ``partial``)."""
    return [(row.kind, row.path, row.size) for row in cache_files.entries()]


def describe_cache_file(kind: str, path: Path) -> str:
    """What a feature cache file holds (empty for an image cache; 'unreadable' if damaged)."""
    if kind == "partial":
        return "left by a write that stopped halfway"
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
    """Remove the cache files (``cache_files.clear``: only the caches' own files); returns how many."""
    return cache_files.clear(features_only)
