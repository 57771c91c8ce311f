"""Issue 31, cause 1: the caches touch only their own files; an abandoned write is found and
removed, a live one never; a feature cache of another width or with NaN rows is not used; two
writers of one feature cache keep both their work; --no-feature-cache holds everywhere."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fewshot_mann.cli import main as cli
from fewshot_mann.data import cache_files, folder
from fewshot_mann.models import features
from helpers import fails_if_blocked
from helpers.images import make_image_folder

ROOT = Path(__file__).resolve().parents[2]
TINY_BACKBONE = ["--encoder", "timm:test_efficientnet", "--encoder-weights", "none"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(root))
    return root


def _npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_cache_clear_removes_only_the_caches_own_files(cache, tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=3, seed=1)
    folder.load_folder(data["root"], image_size=8, progress=False)  # a real decode cache
    ours = [p for p in cache.iterdir() if p.name.startswith("folder-")]
    assert len(ours) == 1 and cache_files.is_owned(ours[0])
    mine = [_npz(cache / "features" / "my_embeddings.npz", a=np.zeros(2)),
            _npz(cache / "folder-scans.npz", a=np.zeros(2)), _npz(cache / "omniglot-notes.npz", a=np.zeros(2)),
            # a user's file with a cache's name but not its content
            _npz(cache / "folder-0123456789ab-0123456789abcdef.npz", a=np.zeros(2))]
    (cache / "data").mkdir()
    (cache / "data" / "omniglot-1px-0123456789abcdef.npz").write_bytes(ours[0].read_bytes())  # a dataset's file
    elsewhere = tmp_path / "elsewhere"  # features/ a link: what it points to is not the cache's
    lookalike = _npz(elsewhere / "features-0123456789abcdef0123.npz", digests=np.zeros(1, "<U64"),
                     features=np.zeros((1, 2), np.float32), meta=np.array("{}"))
    (cache / "features" / "my_embeddings.npz").rename(tmp_path / "mine.npz")
    (cache / "features").rmdir()
    (cache / "features").symlink_to(elsewhere)
    mine[0] = tmp_path / "mine.npz"
    assert cli.main(["cache", "clear"]) == 0
    assert not ours[0].exists()
    assert all(p.exists() for p in mine) and lookalike.exists()
    assert (cache / "data" / "omniglot-1px-0123456789abcdef.npz").exists()
    (cache / "features").unlink()  # and a real features folder with a user's file in it
    _npz(cache / "features" / "my_embeddings.npz", a=np.zeros(2))
    assert cli.main(["cache", "clear", "--features-only"]) == 0
    assert (cache / "features" / "my_embeddings.npz").exists()


WRITER = """
import sys, time
import numpy as np
from fewshot_mann.data import cache_files
def fill(f):
    f.write(b"x" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
cache_files.write(cache_files.cache_dir() / "folder-0123456789ab-0123456789abcdef.npz", fill)
"""


def _writer(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "FEWSHOT_MANN_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_a_write_killed_halfway_is_listed_and_cleared_but_a_live_one_is_never_touched(cache, capsys):
    live = _writer(cache)
    try:
        temps = list(cache.glob(".folder-*.tmp"))
        assert len(temps) == 1
        assert not [e for e in features.cache_entries() if e[0] == "partial"]
        assert cli.main(["cache", "clear"]) == 0
        assert temps[0].exists()  # a live writer's file is never removed
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    assert temps[0].exists()  # kill -9 leaves it ...
    assert cli.main(["cache", "list"]) == 0
    assert "partial" in capsys.readouterr().out  # ... listed ...
    assert cli.main(["cache", "clear"]) == 0
    assert not temps[0].exists()  # ... and removed
    dead = _writer(cache)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert list(cache.glob(".folder-*.tmp"))
    cache_files.write(cache / "folder-aaaaaaaaaaaa-aaaaaaaaaaaaaaaa.npz", lambda f: f.write(b"y"))
    assert not list(cache.glob(".folder-*.tmp"))  # the next cache write cleans up too


def _model():
    pytest.importorskip("timm")
    from fewshot_mann.config import ModelConfig
    # float32: the hand-made cache files below are float32 ones, whatever this CPU would pick by default
    return ModelConfig(encoder="timm:test_efficientnet", encoder_weights="none", embed_precision="fp32")


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 160, 160), dtype=np.uint8)


def test_a_feature_cache_of_another_width_or_with_nan_rows_is_never_used(cache):
    from fewshot_mann.models.backbones import preprocessing

    m = _model()
    images = _images(3, 0)
    truth = features.embed_images(images, m, progress=False, cache=False)
    path = features._cache_file(m, "none")
    keys = features.image_digests(images)
    meta = {"encoder": m.encoder, "weights": "none", "weights_sha256": "none",
            "preprocessing": preprocessing(m.encoder).key()}
    _npz(path, digests=np.asarray(keys, "<U64"), features=np.ones((3, 7), np.float32), meta=np.array(json.dumps(meta)))
    np.testing.assert_allclose(features.embed_images(images, m, progress=False), truth, atol=1e-5)
    poisoned = truth.copy()
    poisoned[1] = np.nan
    _npz(path, digests=np.asarray(keys, "<U64"), features=poisoned, meta=np.array(json.dumps(meta)))
    stats = {}
    out = features.embed_images(images, m, progress=False, stats=stats)
    assert np.isfinite(out).all() and stats["computed"] == 1
    np.testing.assert_allclose(out, truth, atol=1e-5)


def test_two_writers_of_one_feature_cache_keep_both_their_work(cache, monkeypatch):
    m = _model()
    mine, theirs = _images(2, 1), _images(2, 2)
    real = features.run_backbone
    calls = []

    def meanwhile(*args, **kw):  # another process fills the cache while this one computes
        out = real(*args, **kw)
        if not calls:
            calls.append(1)
            features.embed_images(theirs, m, progress=False)
        return out
    monkeypatch.setattr(features, "run_backbone", meanwhile)
    features.embed_images(mine, m, progress=False)
    monkeypatch.setattr(features, "run_backbone", real)
    stats = {}
    features.embed_images(np.concatenate([mine, theirs]), m, progress=False, stats=stats)
    assert stats["computed"] == 0


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("encoder", [TINY_BACKBONE, ["--encoder", "conv"]],
                         ids=["backbone", "raw-pixels"])
def test_no_feature_cache_writes_nothing_derived_from_the_images(cache, tmp_path, encoder):
    """Issue 26: every command that reads the user's images, given --no-feature-cache, leaves the cache
    folder as it was: no features, no decoded images (the folder decode cache), and train's
    --final-eval neither; only the paths the user named (--out, --json) are written."""
    if encoder is TINY_BACKBONE:
        pytest.importorskip("timm")
    data = make_image_folder(tmp_path / "data", classes=5, per_class=4, seed=4)
    before = files_under(cache)
    out = tmp_path / "run"
    common = ["--dataset", "folder", "--data-root", str(data["root"]), "--no-progress", "--no-feature-cache"]
    assert cli.main(["train", *common, *encoder, "--test-classes", "0.4", "--validation-classes", "none",
                     "--ways", "2", "--instances", "3", "--episodes", "2", "--batch-size", "2", "--eval-every", "0",
                     "--controller-size", "8", "--memory-slots", "4", "--memory-width", "4", "--read-heads", "1",
                     "--final-eval", "2", "--out", str(out)]) == 0
    assert (out / "final_eval.json").exists()  # the final evaluation ran, with the cache off
    ckpt = str(out / "checkpoint.pt")
    assert cli.main(["evaluate", "--checkpoint", ckpt, "--episodes", "2", *common]) == 0
    assert cli.main(["knn", "--features", ckpt, "--episodes", "2", *common]) == 0
    assert cli.main(["kshot", "--checkpoint", ckpt, "--episodes", "2", "--ways", "2", "--shots", "1", "--queries", "1",
                     *common]) == 0
    support = tmp_path / "support"
    for name in data["classes"][:2]:
        (support / name).mkdir(parents=True)
        for image in sorted((data["root"] / name).iterdir())[:2]:
            (support / name / image.name).write_bytes(image.read_bytes())
    query = next(iter(sorted((data["root"] / data["classes"][0]).iterdir())))
    assert cli.main(["predict", "--checkpoint", ckpt, "--support", str(support), "--query", str(query),
                     "--no-feature-cache"]) == 0
    assert files_under(cache) == before


@pytest.mark.parametrize("how", ["fifo", "compressed", "wrong shape", "float pixels", "negative count"])
def test_an_omniglot_cache_not_as_the_cache_writes_it_is_decoded_again(cache, tmp_path, how):
    from fewshot_mann.data import omniglot
    from helpers.omniglot import make_fake_omniglot

    root = tmp_path / "omniglot"
    root.mkdir()
    make_fake_omniglot(root, as_zip=True)
    fresh = omniglot.load_omniglot(root, image_size=8, progress=False)
    [path] = cache.glob("omniglot-*.npz")
    z = dict(np.load(path))
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "compressed":
        with open(path, "wb") as f:
            np.savez_compressed(f, **z)
    else:
        _npz(path, **{**z, **{"wrong shape": {"images": z["images"][:, :, :4]},
                              "float pixels": {"images": np.full(z["images"].shape, np.nan, np.float32)},
                              "negative count": {"counts": -z["counts"]}}[how]})
    with fails_if_blocked("the cache file was opened and blocked"):
        again = omniglot.load_omniglot(root, image_size=8, progress=False)
    assert again.images.dtype == np.uint8 and np.array_equal(again.images, fresh.images)
    assert again.counts.tolist() == fresh.counts.tolist() and again.names == fresh.names
