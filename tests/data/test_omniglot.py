"""Omniglot source: splits are disjoint and complete; real zips decode; bad roots fail clearly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fewshot_mann.data import omniglot
from fewshot_mann.errors import DataError, UserError
from helpers.omniglot import make_fake_omniglot


@pytest.mark.parametrize("name,train,validation,test", [("santoro", 1100, 100, 423), ("lake", 834, 130, 659)])
def test_committed_splits_are_disjoint_and_cover_all(name, train, validation, test):
    spec = omniglot.load_split(name)
    assert (len(spec["train"]), len(spec["validation"]), len(spec["test"])) == (train, validation, test)
    assert not set(spec["train"]) & set(spec["test"])
    assert not set(spec["train"]) & set(spec["validation"])
    assert not set(spec["validation"]) & set(spec["test"])
    assert len(set(spec["train"]) | set(spec["validation"]) | set(spec["test"])) == 1623


def test_santoro_test_characters_are_the_paper_protocols_423():
    """Validation came out of the 1,200 training characters: the 423 test characters did not move."""
    spec = omniglot.load_split("santoro")
    names = sorted(spec["train"] + spec["validation"] + spec["test"])
    first_draw = np.random.default_rng(2016).permutation(len(names))
    assert spec["test"] == sorted(names[i] for i in first_draw[1200:])


def test_lake_validation_is_whole_background_alphabets():
    spec = omniglot.load_split("lake")
    alphabets = {n.split("/")[1] for n in spec["validation"]}
    assert len(alphabets) == 4 and all(n.startswith("background/") for n in spec["validation"])
    assert not alphabets & {n.split("/")[1] for n in spec["train"]}


def test_a_split_file_with_overlapping_validation_is_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": ["a", "b"], "validation": ["b"], "test": ["c"]}))
    with pytest.raises(DataError, match="both train and validation"):
        omniglot.load_split(str(path))
    path.write_text(json.dumps({"train": ["a", "b"], "test": ["c"]}))
    assert omniglot.load_split(str(path))["validation"] == []


def test_santoro_split_is_reproducible_from_its_seed():
    spec = omniglot.load_split("santoro")
    names = sorted(spec["train"] + spec["validation"] + spec["test"])
    # The committed file is exactly what the seeded draws give.
    remade = omniglot.make_santoro_split(names, seed=spec["seed"], validation_seed=spec["validation_seed"])
    assert all(remade[part] == spec[part] for part in ("train", "validation", "test"))


def test_lake_split_follows_official_parts():
    spec = omniglot.load_split("lake")
    assert all(n.startswith("background/") for n in spec["train"])
    assert all(n.startswith("evaluation/") for n in spec["test"])


def test_unknown_split():
    with pytest.raises(UserError, match="unknown split 'nope'"):
        omniglot.load_split("nope")


def test_missing_root_says_how_to_get_data(tmp_path):
    with pytest.raises(DataError, match="--download"):
        omniglot.load_omniglot(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images_background"):
        omniglot.load_omniglot(tmp_path / "empty")


@pytest.mark.parametrize("layout", ["zip", "folder", "omniglot-py"])
def test_reads_zip_folder_and_torchvision_layouts(tmp_path, layout):
    if layout == "omniglot-py":
        (tmp_path / "omniglot-py").mkdir()
        make_fake_omniglot(tmp_path, as_zip=False, prefix="omniglot-py/")
    else:
        make_fake_omniglot(tmp_path, as_zip=(layout == "zip"))
    bank = omniglot.load_omniglot(tmp_path, image_size=8, progress=False)
    assert bank.num_classes == 10 and bank.images.shape == (200, 1, 8, 8)
    assert bank.names[0] == "background/Alpha0/character01"
    # white background becomes 0 (strokes bright)
    assert bank.images[1].max() == 0 and bank.images[0].min() == 255  # white paper -> 0, ink -> 255
    again = omniglot.load_omniglot(tmp_path, image_size=8, progress=False)  # from the cache
    assert np.array_equal(again.images, bank.images) and again.names == bank.names


def test_corrupt_zip_is_a_clear_error(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"not a zip")
    (tmp_path / "images_evaluation.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        omniglot.load_omniglot(tmp_path, progress=False)


def test_omniglot_santoro_split(omniglot_source):
    """The real zips when present, else the embedded copy: the same 32,460 images either way."""
    bank = omniglot.load_omniglot(omniglot_source, 20, progress=False)
    assert bank.images.shape == (32460, 1, 20, 20) and bank.images.dtype == np.uint8
    assert set(bank.counts.tolist()) == {20}
    parts = omniglot.split_parts(bank, "santoro")
    train, val, test = parts["train"], parts["validation"], parts["test"]
    assert (train.num_classes, val.num_classes, test.num_classes) == (1100, 100, 423)
    assert not set(train.names) & set(test.names) and not set(val.names) & (set(train.names) | set(test.names))
    rotated = train.with_rotations()
    assert rotated.num_classes == 4400
    assert np.array_equal(rotated.images[rotated.offsets[1100]], np.rot90(train.images[0], 1, axes=(1, 2)))
