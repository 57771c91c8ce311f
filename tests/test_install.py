"""Install anywhere, run offline: the embedded Omniglot and the bundled models."""
from __future__ import annotations

import hashlib
import json
import lzma
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot_mann.engine import bundled

from fewshot_mann.cli import main as cli

from fewshot_mann.data import embedded

from fewshot_mann.data import omniglot
from fewshot_mann.engine.checkpoint import load_checkpoint, save_checkpoint
from fewshot_mann.config import Config
from fewshot_mann.errors import CheckpointError, DataError


@pytest.fixture
def fresh_embedded(monkeypatch):
    """Forget the process-wide decoded copy and the once-only notice for the test's duration."""
    monkeypatch.setattr(embedded, "_BANK", None)
    monkeypatch.setattr(omniglot, "_NOTICE_SHOWN", False)


def test_embedded_is_the_decode_of_the_real_zips(omniglot_root, fresh_embedded):
    decoded = omniglot.load_omniglot(omniglot_root, 20, progress=False)
    bank = embedded.load_embedded()
    assert bank.names == decoded.names
    assert np.array_equal(bank.counts, decoded.counts)
    assert np.array_equal(bank.images, decoded.images)


def test_no_data_root_uses_the_embedded_set_and_says_so(fresh_embedded, capsys):
    bank = omniglot.load_omniglot(None, 20, progress=False)
    assert bank.images.shape == (32460, 1, 20, 20) and bank.num_classes == 1623
    assert not bank.images.flags.writeable  # shared by the process: never modified in place
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedded" in err[0]
    omniglot.load_omniglot(None, 20, progress=False)
    assert capsys.readouterr().err == ""  # said once per process
    train, test = omniglot.split_banks(bank, "santoro")
    assert (train.num_classes, test.num_classes) == (1100, 423)


def test_other_sizes_need_the_original_images(fresh_embedded):
    with pytest.raises(DataError, match=r"28x28 needs the original images.*--download"):
        omniglot.load_omniglot(None, 28, progress=False)


def test_an_env_data_root_is_never_replaced_by_the_embedded_set(monkeypatch, tmp_path, fresh_embedded):
    monkeypatch.setenv("FEWSHOT_MANN_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="does not exist"):
        omniglot.load_omniglot(None, 20, progress=False)


def test_a_damaged_embedded_array_is_refused(monkeypatch, tmp_path, fresh_embedded):
    raw = bytearray(lzma.decompress(embedded.ARRAY.read_bytes()))
    raw[-1] ^= 0xFF  # one pixel changed
    damaged = tmp_path / embedded.ARRAY.name
    damaged.write_bytes(lzma.compress(bytes(raw)))
    monkeypatch.setattr(embedded, "ARRAY", damaged)
    with pytest.raises(DataError, match="checksum"):
        embedded.load_embedded()


def test_bundled_registry_matches_its_files():
    reg = bundled.registry()
    assert "omniglot-5way" in reg
    for name, entry in reg.items():
        assert bundled.verify(name), name
        path = bundled.MODELS_DIR / entry["file"]
        # small: photos.pt is 6.6 MB on disk, 5 MB of it the untrained (all-zero) residual map, which
        # compresses to nothing in git and the wheel
        assert path.stat().st_size <= 7_000_000
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["optimizer"] is None  # weights only


def test_bundled_name_resolves_and_a_path_wins(tmp_path, monkeypatch):
    ckpt = load_checkpoint("omniglot-5way")
    assert ckpt["config_obj"].episodes.ways == 5 and ckpt["config_obj"].model.model == "mann"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "omniglot-5way").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a valid fewshot-mann checkpoint"):
        load_checkpoint("omniglot-5way")  # the file in the working directory, not the bundled model
    with pytest.raises(CheckpointError, match="omniglot-5way"):
        load_checkpoint("no-such-model")  # the error names the bundled models


def test_models_command_lists_names(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "omniglot-5way" in out and "held-out" in out and "santoro" in out
    assert "photos.pt (4 kB," in out and "omniglot-5way.pt (2.6 MB," in out  # sizes in the unit that says something
    assert cli.main(["models", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == sorted(bundled.registry())


def test_an_omniglot_root_recorded_elsewhere_falls_back(tmp_path, capsys):
    cfg = Config()
    cfg.data.data_root = str(tmp_path / "machine-that-trained-it")
    model = {"w": torch.zeros(1)}
    save_checkpoint(tmp_path / "c.pt", {"config": cfg.to_dict(), "model": model, "optimizer": None})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["config_obj"].data.data_root is None
    assert "not on this machine" in capsys.readouterr().err
    cfg.data.dataset, cfg.data.data_root = "folder", str(tmp_path / "images")
    save_checkpoint(tmp_path / "f.pt", {"config": cfg.to_dict(), "model": model, "optimizer": None})
    assert load_checkpoint(tmp_path / "f.pt")["config_obj"].data.data_root == cfg.data.data_root  # user data: kept


def test_predict_with_the_bundled_model_needs_no_other_file(tmp_path, fresh_embedded, capsys):
    """``predict --checkpoint omniglot-5way`` on folders of held-out Omniglot characters as PNGs."""
    bank = omniglot.load_omniglot(None, 20, progress=False)
    _, test = omniglot.split_banks(bank, "santoro")
    classes = [0, 50, 100, 150, 200]
    support, query = tmp_path / "support", tmp_path / "query"
    truth = {}
    for c in classes:
        name = test.names[c].replace("/", "_")
        (support / name).mkdir(parents=True)
        (query / name).mkdir(parents=True)
        first = test.offsets[c]
        for i in range(2):
            Image.fromarray(test.images[first + i, 0]).save(support / name / f"{i}.png")
        for i in range(2, 6):
            Image.fromarray(test.images[first + i, 0]).save(query / name / f"{i}.png")
            truth[str(query / name / f"{i}.png")] = name
    out = tmp_path / "p.json"
    assert cli.main(["predict", "--checkpoint", "omniglot-5way", "--support", str(support),
                     "--query", str(query), "--json", str(out), "--threads", "1"]) == 0
    results = json.loads(out.read_text())
    assert len(results) == len(truth)
    correct = sum(r["prediction"] == truth[r["query"]] for r in results)
    assert correct >= 0.8 * len(truth), results  # 2-shot, 5-way: the model scores ~95% here


def test_bundled_file_is_the_published_checkpoint():
    """One blob in git: the bundled model is the published mann-onehot-5way-finetune2.pt."""
    published = bundled.MODELS_DIR.parents[2] / "reports" / "checkpoints" / "mann-onehot-5way-finetune2.pt"
    if not published.exists():  # an installed wheel has no reports/
        pytest.skip("not a source checkout")
    digest = hashlib.sha256(published.read_bytes()).hexdigest()
    assert digest == bundled.registry()["omniglot-5way"]["sha256"]


def test_rebuild_script_checks_md5s(tmp_path):
    """data/prepare_omniglot.py refuses zips that are neither official nor verified PNG by PNG."""
    import subprocess
    import sys
    repo = bundled.MODELS_DIR.parents[2]
    for name in ("images_background.zip", "images_evaluation.zip"):
        shutil.copy(__file__, tmp_path / name)  # the wrong bytes
    res = subprocess.run([sys.executable, str(repo / "data" / "prepare_omniglot.py"), "--data-root", str(tmp_path),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "not the official archives" in res.stderr
    assert not (tmp_path / "out").exists()
