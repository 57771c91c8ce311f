"""Command lines: every numeric option of train.py and evaluate.py is validated with one clear
line; a run folder is never overwritten by accident; the same seed gives the same numbers, and
evaluation numbers do not depend on batch size or thread count."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from helpers import as_split, patch_banks, synthetic_bank, tiny_config
from fewshot_mann.cli import train as train_cli
from fewshot_mann.cli import evaluate as evaluate_cli
from fewshot_mann.engine import trainer as training
from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from fewshot_mann.engine.evaluation import evaluate

BANKS = (synthetic_bank(classes=10, per_class=12, seed=1), synthetic_bank(classes=6, per_class=12, seed=2))


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    patch_banks(monkeypatch, BANKS)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    return lines[0]


# (flags, what the one error line says). The default --image-size is 20; the synthetic data
# has 10 training classes (40 with rotations), 6 held-out ones, 12 images each.
TRAIN_BAD = [
    (["--final-eval", "-1"], "--final-eval must be >= 0"),
    (["--augment-invert", "1.5"], "--augment-invert must be a probability"),
    (["--augment-contrast", "-0.1"], "--augment-contrast must be in [0, 1)"),
    (["--augment-brightness", "2"], "--augment-brightness must be in [0, 1]"),
    (["--feature-proj", "-1"], "--feature-proj must be >= 0"),
    (["--feature-stages", "-1"], "--feature-stages must be >= 0"),
    (["--feature-stages", "9"], "--feature-stages"),
    (["--model", "lstm", "--previous-image"], "--previous-image is an input of the memory models' controller"),
    (["--model", "transformer", "--memory-input"], "--memory-input feeds the memory models' interface"),
    (["--model", "ntm", "--write-vector"], "--write-vector is an LRUA option (--model mann; got ntm)"),
    (["--feature-dropout", "1"], "--feature-dropout must be in [0, 1) (got 1.0)"),
    (["--read-power", "0"], "--read-power must be in (0, 1] (got 0.0; 1 = as they are)"),
    (["--read-power", "1.5"], "--read-power must be in (0, 1] (got 1.5; 1 = as they are)"),
    (["--image-size", "3"], "--image-size must be at least 4"),
    (["--image-size", "5000"], "--image-size must be at most 1024"),
    (["--image-size", "twenty"], "argument --image-size: invalid int value: 'twenty'"),
    (["--channels", "2"], "--channels must be 1 or 3"),
    (["--jitter-shift", "-1"], "--jitter-shift must be >= 0"),
    (["--jitter-shift", "20"], "below --image-size 20"),
    (["--jitter-shift", "nan"], "--jitter-shift must be >= 0"),
    (["--jitter-rotate", "-5"], "--jitter-rotate must be in [0, 180]"),
    (["--jitter-rotate", "inf"], "--jitter-rotate must be in [0, 180]"),
    (["--ways", "0"], "--ways must be at least 1"),
    (["--ways", "7"], "--ways 7 needs 7 classes but the held-out classes has only 6"),
    (["--labels", "string", "--ways", "4000"], "--ways must be at most 3125 with string labels"),
    (["--instances", "0"], "--instances must be at least 1"),
    (["--instances", "13"], "--instances 13 needs 13 images per class"),
    (["--controller-size", "0"], "--controller-size must be at least 1"),
    (["--memory-slots", "0"], "--memory-slots must be at least 1"),
    (["--memory-width", "-2"], "--memory-width must be at least 1"),
    (["--read-heads", "0"], "--read-heads must be at least 1"),
    (["--read-heads", "5", "--memory-slots", "4"], "--read-heads (5) cannot exceed --memory-slots (4)"),
    (["--usage-decay", "1.5"], "--usage-decay must be in [0, 1]"),
    (["--usage-decay", "nan"], "--usage-decay must be in [0, 1]"),
    (["--write-heads", "0"], "--write-heads must be at least 1"),
    (["--model", "dnc", "--write-heads", "2"], "--model dnc has exactly one write head"),
    (["--shift-range", "-1"], "--shift-range must be >= 0"),
    (["--shift-range", "10", "--memory-slots", "8"], "--shift-range 10 spans 21 slots"),
    (["--transformer-layers", "0"], "--transformer-layers must be at least 1"),
    (["--transformer-heads", "0"], "--transformer-heads must be at least 1"),
    (["--transformer-width", "10", "--transformer-heads", "4"], "--transformer-width must be a positive multiple"),
    (["--transformer-max-steps", "0"], "--transformer-max-steps must be at least 1"),
    (["--model", "transformer", "--transformer-max-steps", "10"], "--transformer-max-steps 10 is shorter"),
    (["--episodes", "-5"], "--episodes must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "-0.001"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
    (["--lr-decay-at", "-1"], "--lr-decay-at must be >= 0"),
    (["--max-minutes", "-1"], "--max-minutes must be"),
    (["--max-minutes", "inf"], "--max-minutes must be"),
    (["--lr-decay-factor", "0"], "--lr-decay-factor must be in (0, 1]"),
    (["--lr-decay-factor", "1.5"], "--lr-decay-factor must be in (0, 1]"),
    (["--grad-clip", "inf"], "--grad-clip must be >= 0"),
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
    (["--seed", str(2**64)], "--seed must be in [0, 2**63)"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--eval-episodes", "0"], "--eval-episodes must be at least 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
    (["--threads", "-1"], "--threads must be in [0, 1024]"),
    (["--threads", "100000"], "--threads must be in [0, 1024]"),
]


def exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusal of a value that is not a number
        return exc.code


@pytest.mark.parametrize("argv,needle", TRAIN_BAD, ids=[" ".join(a) for a, _ in TRAIN_BAD])
def test_train_rejects_bad_numbers_with_one_line(argv, needle, tmp_path, capsys):
    assert exit_code(train_script.main, [*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert needle in error_line(capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def numeric_flags(parser) -> set[str]:
    return {a.option_strings[-1] for a in parser._actions if a.type in (int, float)}


def test_every_numeric_train_flag_has_a_bad_value_case():
    covered = {flag for argv, _ in TRAIN_BAD for flag in argv if flag.startswith("--")}
    missing = numeric_flags(train_cli.train_parser()) - covered
    assert not missing, f"add a rejected value for {sorted(missing)} to TRAIN_BAD (and validate it)"


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = tiny_config()
    cfg.episodes.ways, cfg.episodes.instances = 3, 4
    cfg.data.rotations = False
    cfg.train.episodes, cfg.train.batch_size, cfg.train.eval_every = 8, 4, 0
    with pytest.MonkeyPatch.context() as m:
        m.setattr(training, "load_split_banks", as_split(lambda cfg, progress=True: BANKS))
        training.train(cfg, out, progress=False, log=lambda msg: None)
    return out / "checkpoint.pt"


EVALUATE_BAD = [
    (["--episodes", "0"], "--episodes must be at least 1"),
    (["--episodes", "-3"], "--episodes must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
    (["--threads", "-1"], "--threads must be in [0, 1024]"),
    (["--threads", "100000"], "--threads must be in [0, 1024]"),
    (["--instances", "0"], "--instances must be at least 1"),
    (["--instances", "13"], "--instances 13 needs 13 images per class"),
    (["--ways", "0"], "--ways must be at least 1"),
    (["--ways", "5"], "answers 3-way one-hot labels"),
    (["--finetune", "-1"], "--finetune must be"),
    (["--finetune", "100000"], "--finetune must be"),
]


@pytest.mark.parametrize("argv,needle", EVALUATE_BAD, ids=[" ".join(a) for a, _ in EVALUATE_BAD])
def test_evaluate_rejects_bad_numbers_with_one_line(argv, needle, checkpoint_path, capsys):
    assert exit_code(evaluate_script.main, ["--checkpoint", str(checkpoint_path), *argv, "--no-progress"]) == 2
    assert needle in error_line(capsys)


def test_every_numeric_evaluate_flag_has_a_bad_value_case():
    covered = {flag for argv, _ in EVALUATE_BAD for flag in argv if flag.startswith("--")}
    missing = numeric_flags(evaluate_cli.evaluate_parser()) - covered
    assert not missing, f"add a rejected value for {sorted(missing)} to EVALUATE_BAD (and validate it)"


# ------------------------------------------------------------------ the run folder

TINY = ["--image-size", "6", "--controller-size", "16", "--memory-slots", "10", "--memory-width", "5",
        "--read-heads", "3", "--ways", "3", "--instances", "4", "--no-rotations", "--batch-size", "2",
        "--eval-every", "0", "--no-progress"]


def test_out_holding_another_run_is_never_overwritten_by_accident(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main([*TINY, "--episodes", "4", "--out", str(out)]) == 0
    first = out.joinpath("checkpoint.pt").read_bytes()
    capsys.readouterr()
    # a different run into the same folder: refused, nothing touched
    assert train_script.main([*TINY, "--episodes", "4", "--seed", "5", "--out", str(out)]) == 2
    assert "already holds a run; pass --resume to continue it or --overwrite to replace it" in error_line(capsys)
    assert out.joinpath("checkpoint.pt").read_bytes() == first
    # --resume continues it (and keeps its own seed), --overwrite replaces it
    assert train_script.main([*TINY, "--episodes", "8", "--seed", "5", "--out", str(out), "--resume"]) == 0
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert resumed["episodes_done"] == 8 and resumed["config"]["train"]["seed"] == 0
    assert train_script.main([*TINY, "--episodes", "4", "--seed", "5", "--out", str(out), "--overwrite"]) == 0
    replaced = load_checkpoint(out / "checkpoint.pt")
    assert replaced["episodes_done"] == 4 and replaced["config"]["train"]["seed"] == 5
    assert len(out.joinpath("metrics.jsonl").read_text().splitlines()) == 1  # the old log went too


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    assert train_script.main([*TINY, "--episodes", "4", "--out", str(tmp_path / "run")]) == 2
    assert "is a file; name a folder" in error_line(capsys)


# ------------------------------------------------------------------ determinism


def curve(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["episodes"], r.get("loss"), r["accuracy_by_instance"]) for r in rows]


def test_same_seed_same_curve_and_a_different_seed_another(tmp_path):
    args = [*TINY, "--episodes", "1000", "--batch-size", "20", "--eval-every", "500", "--eval-episodes", "10"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert train_script.main([*args, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    assert curve(tmp_path / "a") == curve(tmp_path / "b")
    assert curve(tmp_path / "a") != curve(tmp_path / "c")
    a, b = load_checkpoint(tmp_path / "a/checkpoint.pt"), load_checkpoint(tmp_path / "b/checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_evaluation_does_not_depend_on_batch_size_or_threads(checkpoint_path):
    model = load_model_from_checkpoint(load_checkpoint(checkpoint_path))
    cfg = load_checkpoint(checkpoint_path)["config_obj"].episodes
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch_size in (1, 7, 50):  # 50 > episodes: one batch
                res = evaluate(model, BANKS[1], cfg, episodes=30, seed=3, batch_size=batch_size)
                results.append(((threads, batch_size), res))
    finally:
        torch.set_num_threads(before)
    (_, first), *rest = results
    for key, res in rest:
        np.testing.assert_allclose(res["_per_episode"], first["_per_episode"], atol=1e-12, err_msg=str(key))
        np.testing.assert_allclose(res["accuracy_by_instance"], first["accuracy_by_instance"], atol=1e-12)
        np.testing.assert_allclose(res["ci95"], first["ci95"], atol=1e-12)
    # and a different evaluation seed gives other episodes (the comparison above is not vacuous)
    other = evaluate(model, BANKS[1], cfg, episodes=30, seed=4, batch_size=7)
    assert not np.array_equal(other["_per_episode"], first["_per_episode"])
