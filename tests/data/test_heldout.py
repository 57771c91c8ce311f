"""Held-out classes stay held out: validation classes for every in-training check, and
evaluation that never silently scores a class or an image the model trained on."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from fewshot_mann.cli import main as cli
from fewshot_mann.cli.train import main as train_main
from fewshot_mann.cli.evaluate import main as evaluate_main
from fewshot_mann.engine.checkpoint import load_checkpoint
from helpers.images import make_image_folder

TINY = ["--controller-size", "16", "--memory-slots", "10", "--memory-width", "5", "--read-heads", "2",
        "--image-size", "8", "--batch-size", "4", "--no-rotations", "--no-progress", "--threads", "1",
        "--final-eval", "0"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("heldout")
    data = make_image_folder(base / "cases", classes=10, per_class=5, seed=5)
    run = base / "run"
    assert train_main(["--dataset", "folder", "--data-root", str(data["root"]), "--channels", "1",
                           "--ways", "2", "--instances", "4", "--test-classes", "0.3", "--episodes", "16",
                           "--eval-every", "8", "--eval-episodes", "6", "--out", str(run), *TINY]) == 0
    return {"data": data, "run": run, "base": base}


def test_a_folder_run_records_three_disjoint_class_lists_and_its_images(folder_run):
    ckpt = load_checkpoint(folder_run["run"] / "checkpoint.pt")
    classes = ckpt["classes"]
    train, val, test = (set(classes[k]) for k in ("train", "validation", "test"))
    assert (len(train), len(val), len(test)) == (5, 2, 3)  # 0.3 and 0.2 of 10 classes, seeded
    assert not train & val and not train & test and not val & test
    assert ckpt["train_images"]["count"] == 5 * 5 and len(ckpt["train_images"]["prefixes"]) == 5 * 5
    split = json.loads((folder_run["run"] / "split.json").read_text())
    assert set(split["validation"]) == val and set(split["test"]) == test


def test_in_training_checks_score_validation_classes(folder_run):
    evals = [json.loads(line) for line in (folder_run["run"] / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert len(evals) == 2 and all(e["classes"] == "validation" for e in evals)


def test_adding_a_class_never_moves_a_trained_class_into_the_test_set(folder_run, tmp_path, capsys):
    root = tmp_path / "cases"
    shutil.copytree(folder_run["data"]["root"], root)
    make_image_folder(root, classes=3, per_class=5, seed=9, first_class=40)  # three new classes
    ckpt = folder_run["run"] / "checkpoint.pt"
    recorded = load_checkpoint(ckpt)["classes"]
    # the same folder (moved, grown): the recorded test classes are scored, nothing else
    out = tmp_path / "e.json"
    assert evaluate_main(["--checkpoint", str(ckpt), "--data-root", str(root), "--episodes", "6",
                              "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["classes"] == "test" and res["class_names"] == sorted(recorded["test"])
    # every class of the grown folder as "held-out": refused, the trained classes are named
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(ckpt), "--data-root", str(root), "--test-classes", "all",
                              "--episodes", "6", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ones this model trained on" in err and "--allow-trained-classes" in err
    assert evaluate_main(["--checkpoint", str(ckpt), "--data-root", str(root), "--test-classes", "all",
                              "--episodes", "6", "--no-progress", "--allow-trained-classes",
                              "--json", str(out)]) == 0
    assert "not a held-out result" in capsys.readouterr().err


def test_a_trained_image_under_a_new_class_name_is_caught(folder_run, tmp_path, capsys):
    """Renaming a trained class does not make its images held out: digests are compared."""
    ckpt = folder_run["run"] / "checkpoint.pt"
    trained = load_checkpoint(ckpt)["classes"]["train"]
    new = tmp_path / "new"
    for i, name in enumerate(trained[:3]):
        shutil.copytree(folder_run["data"]["root"] / name, new / f"renamed{i}")
    assert evaluate_main(["--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(new),
                              "--test-classes", "all", "--episodes", "4", "--no-progress"]) == 2
    assert "of the images" in capsys.readouterr().err


def test_evaluate_scores_validation_and_training_classes_on_request(folder_run, tmp_path, capsys):
    ckpt = folder_run["run"] / "checkpoint.pt"
    recorded = load_checkpoint(ckpt)["classes"]
    for kind, expected in (("validation", recorded["validation"]), ("training", recorded["train"])):
        out = tmp_path / f"{kind}.json"
        assert evaluate_main(["--checkpoint", str(ckpt), "--classes", kind, "--episodes", "4",
                                  "--json", str(out), "--no-progress"]) == 0
        res = json.loads(out.read_text())
        assert res["classes"] == kind and res["class_names"] == sorted(expected)
    assert evaluate_main(["--checkpoint", str(ckpt), "--split", "train", "--episodes", "4",
                              "--no-progress"]) == 0
    assert "deprecated" in capsys.readouterr().err


def test_kshot_json_names_the_classes_it_scored(folder_run, tmp_path):
    out = tmp_path / "k.json"
    assert cli.main(["kshot", "--checkpoint", str(folder_run["run"] / "checkpoint.pt"), "--shots", "1",
                     "--episodes", "5", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    recorded = load_checkpoint(folder_run["run"] / "checkpoint.pt")["classes"]
    assert res["classes"] == "test" and res["class_names"] == sorted(recorded["test"])


def test_an_old_checkpoint_without_records_is_scored_with_a_note(folder_run, tmp_path, capsys):
    old = torch.load(folder_run["run"] / "checkpoint.pt", weights_only=True)
    for key in ("classes", "train_images"):
        old.pop(key)
    torch.save(old, tmp_path / "old.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "old.pt"), "--episodes", "4", "--no-progress"]) == 0
    assert "predates class records" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(tmp_path / "old.pt"), "--episodes", "4", "--no-progress"]) == 0
    assert "predates class records" not in capsys.readouterr().err  # once per checkpoint, not every run


def test_evaluate_on_a_folder_reports_nearest_centroid_on_the_same_episodes(folder_run, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert evaluate_main(["--checkpoint", str(folder_run["run"] / "checkpoint.pt"), "--episodes", "20",
                              "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert set(res["environment"]["versions"]) >= {"python", "torch", "numpy", "PIL", "timm", "torchvision"}
    base, logistic = res["baselines"]  # a raw-pixel model: the raw-pixel baselines only
    assert base["name"] == "nearest-centroid-raw-pixels" and base["episodes"] == 20
    assert logistic["name"] == "logistic-regression-raw-pixels" and logistic["accuracy_by_instance"][3] > 0.5
    assert len(base["accuracy_by_instance"]) == len(res["accuracy_by_instance"]) == 4
    assert base["accuracy_by_instance"][0] <= 0.5 + 1e-9  # 2-way: nothing stored at a class's 1st presentation
    assert base["accuracy_by_instance"][3] > 0.5  # synthetic shapes: centroids of raw pixels separate them
    assert "nearest-centroid-raw-pixels" in capsys.readouterr().out
