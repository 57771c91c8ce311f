"""``predict``: the protocol against a literal step-by-step version, query independence, every
model type from its checkpoint alone, clear errors; and the rare-case workflow end to end
(train.py --dataset folder -> evaluate.py -> predict) with its privacy properties."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import held_out_characters, tiny_config
from helpers.images import make_image_folder
from fewshot_mann.cli import main as cli
from fewshot_mann.cli.train import main as train_main
from fewshot_mann.cli.evaluate import main as evaluate_main
from fewshot_mann.engine.checkpoint import save_checkpoint
from fewshot_mann.config import MODELS, STRING_LENGTH, STRING_SYMBOLS
from fewshot_mann.data.folder import load_folder
from fewshot_mann.engine.predict import class_probabilities, predict_probabilities
from fewshot_mann.engine.trainer import new_model

REPO = Path(__file__).resolve().parents[2]
TINY = ["--controller-size", "16", "--memory-slots", "16", "--memory-width", "8", "--episodes", "32",
        "--batch-size", "4", "--image-size", "8"]


def write_checkpoint(path, cfg):
    save_checkpoint(path, {"config": cfg.to_dict(), "command": None, "model": new_model(cfg).state_dict(),
                           "optimizer": None, "step": 0, "episodes_done": 0})
    return path


def support_cfg(model="mann", labels="onehot", ways=3, instances=4):
    cfg = tiny_config()
    cfg.model.model = model
    cfg.data.dataset, cfg.data.image_size, cfg.data.channels = "folder", 8, 3
    cfg.episodes.ways, cfg.episodes.instances, cfg.episodes.labels = ways, instances, labels
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def support(tmp_path_factory):
    base = tmp_path_factory.mktemp("support")
    made = make_image_folder(base / "support", classes=3, per_class=4, seed=11)
    queries = make_image_folder(base / "queries", classes=3, per_class=2, seed=12)
    return made, queries


# ----------------------------------------------------------------------------- protocol

def test_class_probabilities_match_a_literal_product_of_characters():
    torch.manual_seed(0)
    groups, size, classes = STRING_LENGTH, STRING_SYMBOLS, 4
    logits = torch.randn(2, groups * size)
    codes = torch.randint(0, size, (2, classes, groups))
    got = class_probabilities(logits, codes, size)
    for b in range(2):
        p = torch.softmax(logits[b].view(groups, size), -1)
        scores = torch.tensor([float(np.prod([p[g, codes[b, c, g]].item() for g in range(groups)]))
                               for c in range(classes)])
        assert torch.allclose(got[b], scores / scores.sum(), atol=1e-6)
    onehot = class_probabilities(logits[:, :5], torch.tensor([[[4], [1]], [[0], [2]]]), 5)
    full = torch.softmax(logits[:, :5], -1)
    assert torch.allclose(onehot[0], full[0, [4, 1]] / full[0, [4, 1]].sum(), atol=1e-6)


def literal_support_sequence(bank, cfg, rng):
    """support_sequence written out again: per class (in order) a random ``instances - 1`` of
    its images if it has more, in file order; then one shuffle of all; then the labels."""
    cap = cfg.episodes.instances - 1
    picks = []
    for c in range(bank.num_classes):
        n = int(bank.counts[c])
        chosen = sorted(rng.permutation(n)[:cap]) if n > cap else list(range(n))
        picks += [(int(bank.offsets[c]) + int(i), c) for i in chosen]
    order = rng.permutation(len(picks))
    images = bank.images[[picks[i][0] for i in order]]
    step_class = [picks[i][1] for i in order]
    if cfg.episodes.labels == "onehot":
        codes = [[int(x)] for x in rng.permutation(cfg.episodes.ways)[:bank.num_classes]]
    else:  # a distinct 5-character code of 5 symbols, least significant character first
        codes = [[int(v) // 5 ** k % 5 for k in range(5)] for v in rng.choice(5 ** 5, size=bank.num_classes,
                                                                               replace=False)]
    return images, step_class, codes


def literal_class_probabilities(last, codes, group_size):
    """Each class: the product over label groups of its symbol's softmax probability, renormalised."""
    p = torch.softmax(last.double().view(-1, group_size), -1)
    scores = np.array([float(np.prod([p[g, symbol].item() for g, symbol in enumerate(code)])) for code in codes])
    return scores / scores.sum()


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_batched_prediction_equals_one_sequence_at_a_time(support, labels):
    cfg = support_cfg(labels=labels)
    model = new_model(cfg).eval()
    bank = load_folder(support[0]["root"], 8, 3, progress=False, cache=False).bank
    queries = load_folder(support[1]["root"], 8, 3, progress=False, cache=False).bank.images  # (6,3,8,8)
    probs = predict_probabilities(model, cfg, bank, queries, orders=3, seed=5, batch_size=4)
    assert probs.shape == (3, 6, 3) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    # Literal: build order 1's sequence by hand (its generator is seeded [stream 3, seed 5, order 1]),
    # one query at a time, and read the last step; no production function of predict is used.
    images, step_class, codes = literal_support_sequence(bank, cfg, np.random.default_rng([3, 5, 1]))
    assert len(images) == 9  # 3 classes x min(4, instances - 1 = 3)
    assert sorted(step_class) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for q in (0, 4):
        seq = torch.from_numpy(np.concatenate([images, queries[q:q + 1]])).float().div(255)[None]
        labels_in = torch.zeros(1, len(seq[0]), cfg.episodes.label_size)
        for t in range(1, len(seq[0])):
            for g, symbol in enumerate(codes[step_class[t - 1]]):
                labels_in[0, t, g * cfg.episodes.group_size + symbol] = 1
        with torch.no_grad():
            last = model(seq, labels_in)[0, -1]
        expect = literal_class_probabilities(last, codes, cfg.episodes.group_size)
        assert np.allclose(probs[1, q], expect, atol=1e-5)


# the (orders=4, queries=3, classes=2) probabilities of one prediction, written out; binary
# fractions, so means are exact
PROBS_2 = np.array([
    [[1.0, 0.0], [0.875, 0.125], [0.4375, 0.5625]],
    [[0.25, 0.75], [0.625, 0.375], [0.4375, 0.5625]],
    [[0.875, 0.125], [0.75, 0.25], [0.4375, 0.5625]],
    [[0.875, 0.125], [0.75, 0.25], [1.0, 0.0]],
])


def test_summarise_averages_over_orders_and_counts_agreeing_orders():
    from fewshot_mann.engine.predict import summarise

    rows = summarise(["cat", "dog"], PROBS_2, None, ["q0", "q1", "q2"])
    assert [r["query"] for r in rows] == ["q0", "q1", "q2"]
    # q0: mean (1 + .25 + .875 + .875) / 4 = 0.75; order 1 votes dog -> 3 of 4 agree
    assert rows[0]["probabilities"] == {"cat": 0.75, "dog": 0.25}
    assert (rows[0]["prediction"], rows[0]["confidence"], rows[0]["order_agreement"]) == ("cat", 0.75, 0.75)
    assert rows[1]["probabilities"] == {"cat": 0.75, "dog": 0.25} and rows[1]["order_agreement"] == 1.0
    # q2: 3 orders vote dog (0.5625) but the mean favours cat: (3 * .4375 + 1) / 4 = 0.578125
    assert rows[2]["prediction"] == "cat" and rows[2]["confidence"] == 0.578125
    assert rows[2]["probabilities"]["dog"] == 0.421875 and rows[2]["order_agreement"] == 0.25


def test_low_confidence_flips_exactly_at_the_threshold():
    from fewshot_mann.engine.predict import summarise

    # default with 2 classes: (1 + 1/2) / 2 = 0.75; a top probability of 0.75 is not below it
    low = [r["low_confidence"] for r in summarise(["cat", "dog"], PROBS_2, None, ["q0", "q1", "q2"])]
    assert low == [False, False, True]
    assert [r["low_confidence"] for r in summarise(["cat", "dog"], PROBS_2, 0.75, ["a", "b", "c"])] == \
        [False, False, True]
    assert [r["low_confidence"] for r in summarise(["cat", "dog"], PROBS_2, 0.7500001, ["a", "b", "c"])] == \
        [True, True, True]
    assert [r["low_confidence"] for r in summarise(["cat", "dog"], PROBS_2, 0.578125, ["a", "b", "c"])] == \
        [False, False, False]
    # 3 classes: the default cut is (1 + 1/3) / 2 = 0.6667, not the 2-class 0.75
    three = np.array([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]], [[0.9, 0.05, 0.05], [0.75, 0.125, 0.125]]])
    rows = summarise(["a", "b", "c"], three, None, ["q0", "q1"])
    assert [r["confidence"] for r in rows] == [0.7, 0.625]  # (0.5 + 0.9) / 2, (0.5 + 0.75) / 2
    assert [r["low_confidence"] for r in rows] == [False, True]


def test_a_query_never_sees_the_others(support):
    cfg = support_cfg()
    model = new_model(cfg).eval()
    bank = load_folder(support[0]["root"], 8, 3, progress=False, cache=False).bank
    queries = load_folder(support[1]["root"], 8, 3, progress=False, cache=False).bank.images
    together = predict_probabilities(model, cfg, bank, queries, orders=4, seed=0, batch_size=7)
    alone = predict_probabilities(model, cfg, bank, queries[2:3], orders=4, seed=0, batch_size=1)
    assert np.allclose(together[:, 2], alone[:, 0], atol=1e-6)
    other_seed = predict_probabilities(model, cfg, bank, queries[2:3], orders=4, seed=1)
    assert not np.allclose(other_seed, alone)  # the orders really are reshuffled


@pytest.mark.parametrize("model", MODELS)
def test_every_model_type_predicts_from_its_checkpoint_alone(model, support, tmp_path, capsys):
    cfg = support_cfg(model=model)
    ckpt = write_checkpoint(tmp_path / "c.pt", cfg)
    out = tmp_path / "p.json"
    code = cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(support[0]["root"]),
                     "--query", str(support[1]["root"]), "--orders", "2", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())
    assert len(rows) == 6
    for r in rows:
        assert set(r) >= {"query", "prediction", "probabilities", "low_confidence"}
        assert r["prediction"] in support[0]["classes"] and Path(r["query"]).exists()
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4


def test_predict_errors_are_one_clear_line(support, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c2.pt", support_cfg(ways=2))
    base = ["predict", "--checkpoint", str(ckpt), "--support", str(support[0]["root"])]
    cases = [
        (base + ["--query", str(support[1]["root"])], "3 classes but the checkpoint's model answers with 2"),
        (["predict", "--checkpoint", str(tmp_path / "none.pt"), "--support", "x", "--query", "y"], "does not exist"),
        (base + ["--query", str(tmp_path / "missing.png")], "--query"),
        (base + ["--query", "q", "--orders", "0"], "--orders"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and "Traceback" not in err, err
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    src = sorted((support[0]["root"] / support[0]["classes"][0]).iterdir())[0]
    (one / "only" / src.name).write_bytes(src.read_bytes())
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    ok = write_checkpoint(tmp_path / "c3.pt", support_cfg(ways=3))
    assert cli.main(["predict", "--checkpoint", str(ok), "--support", str(one), "--query", str(src)]) == 2
    assert "at least 2 classes" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", str(ok), "--support", str(support[0]["root"]),
                     "--query", str(junk)]) == 2
    err = capsys.readouterr().err
    assert f"skipped --query {junk}" in err and "error: no readable query images" in err


def test_string_labels_may_name_more_classes_than_ways_with_a_warning(support, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "s.pt", support_cfg(labels="string", ways=2))
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(support[0]["root"]),
                     "--query", str(support[1]["root"]), "--orders", "2"]) == 0
    assert "trained on 2-way episodes" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """train.py --dataset folder -> evaluate.py -> predict, through the real entry points."""
    base = tmp_path_factory.mktemp("workflow")
    data = make_image_folder(base / "cases", classes=6, per_class=6, seed=21, with_problems=True)
    run = base / "run"
    code = train_main(["--dataset", "folder", "--data-root", str(data["root"]), "--channels", "3",
                           "--ways", "2", "--instances", "4", "--test-classes", "0.34", "--eval-every", "16",
                           "--eval-episodes", "8", "--out", str(run), "--no-progress", "--threads", "1", *TINY])
    assert code == 0
    return {"data": data, "run": run, "base": base}


def test_folder_run_writes_its_split_and_evaluate_rebuilds_it(workflow, tmp_path, capsys):
    split = json.loads((workflow["run"] / "split.json").read_text())
    assert len(split["test"]) == 2 and len(split["train"]) + len(split["validation"]) == 4
    assert len(split["validation"]) == 1  # round(0.2 * 6) of the non-test classes
    assert not set(split["train"]) & set(split["test"]) and not set(split["validation"]) & set(split["test"])
    out = tmp_path / "eval.json"
    assert evaluate_main(["--checkpoint", str(workflow["run"] / "checkpoint.pt"), "--episodes", "12",
                              "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["num_classes"] == 2 and len(res["accuracy_by_instance"]) == 4 and len(res["ci95"]) == 4
    assert res["classes"] == "test" and res["class_names"] == sorted(split["test"])
    assert res["config"]["data"]["test_classes"] == "0.34"
    capsys.readouterr()


def test_a_folder_checkpoint_evaluates_on_a_new_folder_of_classes(workflow, tmp_path, capsys):
    new = make_image_folder(tmp_path / "new", classes=3, per_class=3, seed=51, first_class=30)
    out = tmp_path / "new.json"
    assert evaluate_main(["--checkpoint", str(workflow["run"] / "checkpoint.pt"), "--data-root", str(new["root"]),
                              "--test-classes", "all", "--instances", "3", "--episodes", "6", "--json", str(out),
                              "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["num_classes"] == 3 and len(res["accuracy_by_instance"]) == 3
    capsys.readouterr()


def test_predict_after_training_through_the_module_entry_point(workflow, tmp_path):
    support = make_image_folder(tmp_path / "support", classes=2, per_class=3, seed=31, first_class=20)
    query = make_image_folder(tmp_path / "new", classes=2, per_class=1, seed=32, first_class=20)
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fewshot_mann", "predict", "--checkpoint",
                           str(workflow["run"] / "checkpoint.pt"), "--support", str(support["root"]),
                           "--query", str(query["root"]), "--json", str(out_json), "--csv", str(out_csv),
                           "--orders", "3", "--threads", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out_json.read_text())
    assert [Path(r["query"]).parent.name for r in rows] == sorted(query["classes"])
    assert all(set(r["probabilities"]) == set(support["classes"]) for r in rows)
    assert out_csv.read_text().splitlines()[0].startswith("query,prediction,confidence,low_confidence")
    assert "prediction" in proc.stdout and "Traceback" not in proc.stderr


def test_an_omniglot_style_checkpoint_evaluates_on_a_folder_it_never_saw(tmp_path, capsys):
    cfg = tiny_config()  # dataset omniglot, 1 channel
    cfg.data.image_size = 10
    cfg.episodes.ways, cfg.episodes.instances = 3, 5
    ckpt = write_checkpoint(tmp_path / "omni.pt", cfg)
    folder = make_image_folder(tmp_path / "photos", classes=4, per_class=3, seed=41)
    out = tmp_path / "cross.json"
    code = evaluate_main(["--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(folder["root"]),
                              "--instances", "3", "--episodes", "10", "--json", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["num_classes"] == 4 and len(res["accuracy_by_instance"]) == 3  # every class held out
    assert res["config"]["data"]["image_size"] == 10 and res["config"]["data"]["channels"] == 1


def test_init_from_fine_tunes_with_a_clear_account_of_the_input(workflow, tmp_path, capsys):
    run = tmp_path / "ft"
    code = train_main(["--dataset", "folder", "--data-root", str(workflow["data"]["root"]), "--channels", "1",
                           "--ways", "2", "--instances", "4", "--test-classes", "0.34", "--eval-every", "0",
                           "--out", str(run), "--no-progress", "--threads", "1", *TINY[:-2], "--image-size", "6",
                           "--episodes", "8", "--init-from", str(workflow["run"] / "checkpoint.pt")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "input adapted: the checkpoint reads 8x8 RGB images, this run 6x6 grayscale" in err
    assert "adapted input_proj.weight: pixel weights resampled; label columns copied" in err


# ----------------------------------------------------------------------------- privacy

def test_run_outputs_hold_no_images_and_no_file_names(workflow):
    """Checkpoint = weights + config + counters; run files name classes and counts, never files."""
    data, run = workflow["data"], workflow["run"]
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    tensors = []

    def walk(x, where):
        if isinstance(x, torch.Tensor):
            tensors.append((where, x))
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")
    walk(ckpt, "ckpt")
    from fewshot_mann.config import Config
    model = new_model(Config.from_dict(ckpt["config"]))
    # The weights are parameters only: no buffer could carry an episode's memory out of it.
    assert set(ckpt["model"]) == {name for name, _ in model.named_parameters()}
    weights = {k: v.shape for k, v in ckpt["model"].items()}
    for where, t in tensors:
        assert t.dtype != torch.uint8, where  # no image arrays
        if where.startswith("ckpt.model."):
            continue
        if where.startswith("ckpt.optimizer"):  # Adam moments: parameter shapes, or scalar steps
            assert t.numel() == 1 or tuple(t.shape) in {tuple(s) for s in weights.values()}, where
            continue
        assert t.numel() <= 64, where  # counters only
    # No training image, decoded or as a file, appears anywhere in the checkpoint's bytes.
    raw = (run / "checkpoint.pt").read_bytes()
    bank = load_folder(data["root"], 8, 3, progress=False, cache=False).bank
    assert not any(bank.images[i].tobytes() in raw for i in range(len(bank.images)))
    files = [p for p in data["root"].rglob("*") if p.is_file()]
    assert not any(p.read_bytes()[:64] in raw for p in files if p.stat().st_size >= 64)
    for p in files:  # no file names, in the checkpoint or any file of the run
        for out in [raw] + [f.read_bytes() for f in run.iterdir() if f.is_file()]:
            assert p.name.encode() not in out, (p.name, out[:40])
    split = json.loads((run / "split.json").read_text())
    assert set(split["train"]) | set(split["test"]) <= set(data["classes"])  # class names and counts only


def test_predict_leaves_nothing_behind(support, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(cache))
    ckpt = write_checkpoint(tmp_path / "c.pt", support_cfg())
    before = sorted(p for p in tmp_path.rglob("*"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(support[0]["root"]),
                     "--query", str(support[1]["root"]), "--orders", "2"]) == 0
    assert not cache.exists() and not any(work.iterdir())
    assert sorted(p for p in tmp_path.rglob("*") if p != work) == before


def test_adapt_answers_with_a_fine_tuned_copy_and_leaves_the_model_alone(support, tmp_path, capsys, monkeypatch):
    from fewshot_mann.engine import adapt as adapt_module

    cfg = support_cfg()
    ckpt = write_checkpoint(tmp_path / "c.pt", cfg)
    before = {k: v.clone() for k, v in torch.load(ckpt, weights_only=True)["model"].items()}
    calls = []
    real = adapt_module.adapt_to_support
    monkeypatch.setattr(adapt_module, "adapt_to_support", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    outs = {}
    for steps in (0, 3):
        out = tmp_path / f"p{steps}.json"
        argv = ["predict", "--checkpoint", str(ckpt), "--support", str(support[0]["root"]),
                "--query", str(support[1]["root"]), "--orders", "2", "--json", str(out), "--adapt", str(steps)]
        assert cli.main(argv) == 0, capsys.readouterr().err
        outs[steps] = json.loads(out.read_text())
    assert "adapted 3 steps to the support set" in capsys.readouterr().out
    assert calls == [3]  # only the --adapt run fine-tunes, with the steps asked for
    probs = [[r["probabilities"][c] for c in sorted(r["probabilities"])] for r in outs[0]], \
        [[r["probabilities"][c] for c in sorted(r["probabilities"])] for r in outs[3]]
    assert probs[0] != probs[1]  # the fine-tuned copy answers, not the checkpoint's model
    after = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_long_adapt_shows_its_progress(support, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c.pt", support_cfg())
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(support[0]["root"]), "--query",
                     str(support[1]["root"]), "--orders", "1", "--adapt", "100"]) == 0
    assert "adapting to the support set" in capsys.readouterr().err


def test_adapt_refuses_a_one_hot_model_with_other_numbers_of_classes(support, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c.pt", support_cfg(ways=5))
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(support[0]["root"]),
                     "--query", str(support[1]["root"]), "--adapt", "2"]) == 2
    err = capsys.readouterr().err
    assert "--adapt: this one-hot model answers 5 classes and the support set has 3" in err and "Traceback" not in err


def test_lake_model_predicts_twenty_classes_from_one_image_each(tmp_path):
    """Issue 19: the committed lake-20way model (its Conv4 backbone found beside it) with 20
    support classes of one image each, from one evaluation alphabet it never trained on."""
    from PIL import Image

    test = held_out_characters("lake")
    alphabet = test.names[0].rsplit("/", 1)[0]
    chars = [c for c, n in enumerate(test.names) if n.startswith(alphabet + "/")][:20]
    assert len(chars) == 20
    queries = []
    for c in chars:
        name = test.names[c].rsplit("/", 1)[1]
        (tmp_path / "support" / name).mkdir(parents=True)
        first = test.offsets[c]
        Image.fromarray(255 - test.images[first, 0]).save(tmp_path / "support" / name / "a.png")  # dark on light
        query = tmp_path / f"{name}__q.png"
        Image.fromarray(255 - test.images[first + 1, 0]).save(query)
        queries.append(str(query))
    out = tmp_path / "p.json"
    checkpoint = Path(__file__).resolve().parents[2] / "reports" / "checkpoints" / "lake-20way.pt"
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--support", str(tmp_path / "support"), "--query", *queries,
                "--orders", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 20
    right = sum(r["prediction"] == Path(r["query"]).name.split("__")[0] for r in rows)
    assert right >= 10, right  # chance is 1 in 20
