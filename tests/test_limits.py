"""Issue 31, cause 4: every number has an upper bound, from any source (a flag of any command,
a ``-c`` file, a checkpoint's config); a config asking for a huge model is refused before
anything is allocated."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing

import pytest
import torch

from fewshot_mann import limits
from fewshot_mann.cli import main as cli
from fewshot_mann.cli import bench, evaluate, knn, kshot, predict, pretrain, report, train
from fewshot_mann.config import SECTIONS, Config
from fewshot_mann.options import field_problem, flag_of, kind_of
from fewshot_mann.engine import trainer as training
from helpers import SYNTHETIC_BANKS, TINY_TRAIN, one_error_line, as_split, patch_banks, tiny_config

HUGE = 10_000_000_000_000_000_000  # past a C long long
BANKS = SYNTHETIC_BANKS
TINY = TINY_TRAIN


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    patch_banks(monkeypatch, BANKS)


def int_fields():
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if kind_of(hints[f.name])[0] is int:
                yield section, f


INT_FIELDS = list(int_fields())


@pytest.mark.parametrize("section,f", INT_FIELDS, ids=[f"{s}.{f.name}" for s, f in INT_FIELDS])
def test_every_integer_config_field_has_an_upper_bound(section, f):
    assert field_problem(f, HUGE), f"{section}.{f.name} takes {HUGE}"
    cfg = Config()
    setattr(getattr(cfg, section), f.name, HUGE)
    data = cfg.to_dict()
    with pytest.raises(Exception) as err:  # a checkpoint's or an evaluation JSON's config
        Config.from_dict(data)
    assert type(err.value).__name__ == "UserError"


def without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value (a flag given on the command line wins over ``-c``)."""
    if flag not in argv:
        return argv
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


FLAGGED = [(s, f) for s, f in INT_FIELDS if flag_of(f)]


@pytest.mark.parametrize("section,f", FLAGGED, ids=[flag_of(f) for _, f in FLAGGED])
def test_a_huge_number_is_one_line_from_the_command_line_and_a_config_file(section, f, tmp_path, capsys):
    flag = flag_of(f)
    assert cli.main(["train", *TINY, flag, str(HUGE), "--out", str(tmp_path / "a")]) == 2
    assert flag in one_error_line(capsys)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({section: {f.name: HUGE}}))
    assert cli.main(["train", *without(TINY, flag), "-c", str(config), "--out", str(tmp_path / "b")]) == 2
    assert flag in one_error_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


PARSERS = {"train": train.train_parser, "evaluate": evaluate.evaluate_parser, "predict": predict.parser,
           "kshot": kshot.parser, "knn": knn.knn_parser, "bench": bench.bench_parser, "pretrain": pretrain.parser,
           "report": report.report_parser}


def integer_actions():
    for name, make in PARSERS.items():
        for action in make()._actions:
            if action.type is int and action.option_strings:
                yield name, action


ACTIONS = list(integer_actions())


@pytest.mark.parametrize("command,action", ACTIONS, ids=[f"{c} {a.option_strings[0]}" for c, a in ACTIONS])
def test_every_integer_flag_of_every_command_has_an_upper_bound(command, action):
    """A flag's own check (``add_flag``), or the config field it sets (train)."""
    rule = getattr(action, "problem", None)
    if rule is None and command == "train":
        section, name, _ = train.config_flags()[action.dest]
        f = next(g for g in dataclasses.fields(SECTIONS[section]) if g.name == name)
        rule = lambda value: field_problem(f, value)  # noqa: E731
    assert rule is not None, f"{command} {action.option_strings[0]} has no check"
    assert rule(HUGE), f"{command} {action.option_strings[0]} takes {HUGE}"
    assert isinstance(action, argparse.Action)


@pytest.mark.parametrize("argv", [
    ["predict", "--checkpoint", "missing.pt", "--support", "s", "--query", "q", "--adapt", str(10**20)],
    ["predict", "--checkpoint", "missing.pt", "--support", "s", "--query", "q", "--orders", str(10**19)],
    ["kshot", "--checkpoint", "missing.pt", "--shots", "1", str(10**19)],
    ["report", "--threads", "100000"],
    ["report", "--episodes", str(10**19)],
])
def test_predict_kshot_and_report_counts_are_bounded(argv, capsys):
    assert cli.main(argv) == 2
    assert "must be" in one_error_line(capsys)


def test_a_config_asking_for_a_huge_model_is_refused_before_anything_is_allocated(tmp_path, capsys):
    big = ["--controller-size", "16384", "--memory-width", "16384", "--read-heads", "64", "--memory-slots", "128"]
    assert cli.main(["train", *TINY, *big, "--out", str(tmp_path / "run")]) == 2
    assert "parameters, over the limit" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_config_with_a_huge_number_is_one_line(tmp_path, capsys):
    cfg = tiny_config()
    cfg.episodes.ways, cfg.episodes.instances, cfg.data.rotations = 3, 4, False
    cfg.train.episodes, cfg.train.batch_size, cfg.train.eval_every = 4, 2, 0
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(training, "load_split_banks", as_split(lambda cfg, progress=True: BANKS))
        training.train(cfg, out, progress=False, log=lambda msg: None)
    for key, value in (("controller_size", HUGE), ("memory_width", 2**40), ("memory_slots", 16384)):
        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        ckpt["config"]["model"][key] = value
        if key == "memory_slots":  # each field within its bound, the model too big
            ckpt["config"]["model"].update(controller_size=16384, memory_width=16384, num_read_heads=64)
        torch.save(ckpt, tmp_path / "bad.pt")
        assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "bad.pt"), "--episodes", "2", "--no-progress"]) == 2
        line = one_error_line(capsys)
        assert "invalid config" in line, line


def test_the_limits_are_far_above_real_use():
    assert limits.MAX_WAYS >= 5_000 and limits.MAX_PARAMETERS >= 100 * 680_453  # 5,000-class folders, the models


@pytest.mark.parametrize("flags,needle", [
    (["--memory-slots", "65536", "--memory-width", "16384", "--read-heads", "1"], "the memories of one training batch"),
    (["--image-size", "1024", "--ways", "50", "--instances", "20", "--batch-size", "64"], "input values"),
])
def test_a_training_batch_too_large_to_hold_is_one_line(flags, needle, tmp_path, capsys):
    argv = TINY
    for flag in flags[::2]:
        argv = without(argv, flag)
    assert cli.main(["train", *argv, *flags, "--out", str(tmp_path / "run")]) == 2
    assert needle in one_error_line(capsys)


def test_a_number_just_past_its_bound_is_shown_with_every_digit(capsys):
    from fewshot_mann.cli.common import at_least

    assert at_least(0, "--adapt", high=10_000)(10_001) == "--adapt must be at most 10,000 (got 10,001)"
    assert cli.main(["train", "--controller-size", "16385", "--episodes", "1"]) == 2
    assert "(got 16,385)" in capsys.readouterr().err
