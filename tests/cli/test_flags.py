"""Flags. The train flags are generated from the config fields' metadata (config.py option):
this pins them to the flags ``train --help`` offered before (commit b2b607d), so nothing drifts."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from fewshot_mann.cli import train as train_cli
from fewshot_mann.cli.common import DeprecatedSpelling
from fewshot_mann.config import SECTIONS

# (option strings, default, choices, kind) of every flag of ``python -m fewshot_mann train --help`` at b2b607d
TODAY = [
    ('-c --config', None, None, 'str'),
    ('--dataset', 'omniglot', ('omniglot', 'folder'), 'str'),
    ('--data-root', None, None, 'str'),
    ('--download', False, None, 'store_true'),
    ('--split', 'santoro', None, 'str'),
    ('--image-size', 20, None, 'int'),
    ('--channels', 1, None, 'int'),
    ('--rotations --no-rotations', True, None, 'bool'),
    ('--jitter-shift', 0.0, None, 'float'),
    ('--jitter-rotate', 0.0, None, 'float'),
    ('--test-root', None, None, 'str'),
    ('--test-classes', None, None, 'str'),
    ('--validation-classes', None, None, 'str'),
    ('--resize', 'auto', ('auto', 'backbone', 'pad', 'crop', 'stretch'), 'str'),
    ('--polarity', 'auto', ('auto', 'keep', 'invert'), 'str'),
    ('--augment-invert', 0.0, None, 'float'),
    ('--augment-contrast', 0.0, None, 'float'),
    ('--augment-brightness', 0.0, None, 'float'),
    ('--ways', 5, None, 'int'),
    ('--instances', 10, None, 'int'),
    ('--labels', 'onehot', ('onehot', 'string'), 'str'),
    ('--model', 'mann', ('mann', 'ntm', 'dnc', 'lstm', 'ff', 'transformer', 'keyed'), 'str'),
    ('--encoder', 'linear', None, 'str'),
    ('--encoder-weights', 'imagenet', None, 'str'),
    ('--embed-precision', 'auto', ('auto', 'fp32', 'bf16'), 'str'),
    ('--feature-stages', 0, None, 'int'),
    ('--feature-norm', 'center-l2', ('none', 'l2', 'center-l2'), 'str'),
    ('--feature-proj', 0, None, 'int'),
    ('--feature-dropout', 0.0, None, 'float'),
    ('--keyed-write', 'mean', ('mean', 'logistic'), 'str'),
    ('--read-power', 1.0, None, 'float'),  # added in session 13: the keyed centroid read's power transform (issue 29)
    ('--no-feature-cache', False, None, 'store_true'),
    ('--controller-size', 200, None, 'int'),
    ('--memory-slots', 128, None, 'int'),
    ('--memory-width', 40, None, 'int'),
    ('--read-heads', 4, None, 'int'),
    ('--usage-decay', 0.95, None, 'float'),
    ('--key-strength --no-key-strength', True, None, 'bool'),  # default on since 2026-12-07 (issue 33)
    ('--previous-image --no-previous-image', False, None, 'bool'),  # added 2026-12-07 (issue 30)
    ('--memory-input --no-memory-input', False, None, 'bool'),  # added 2026-12-07 (issue 30)
    ('--memory-init', 'random', ('random', 'features'), 'str'),  # added 2026-12-07, session 10 (issue 30)
    ('--write-vector --no-write-vector', False, None, 'bool'),  # added 2026-12-07 (issue 30)
    ('--compile --no-compile', None, None, 'bool'),  # obsolete since the torch.compile path went: a notice, ignored
    ('--memory-backend', 'auto', ('auto', 'autograd', 'sequence', 'kernel'), 'str'),  # memory/backend.py
    ('--ink-frame', 'auto', ('auto', 'keep'), 'str'),  # folder.apply_ink_frame (issue 18, handwriting)
    ('--write-heads', 1, None, 'int'),
    ('--shift-range', 1, None, 'int'),
    ('--transformer-layers', 3, None, 'int'),
    ('--transformer-heads', 4, None, 'int'),
    ('--transformer-width', 128, None, 'int'),
    ('--transformer-max-steps', 256, None, 'int'),
    ('--episodes', 240000, None, 'int'),  # 100000 before 2026-12-07 (issue 33: the main command)
    ('--batch-size', 16, None, 'int'),
    ('--lr', 0.002, None, 'float'),  # 0.001 before 2026-12-07 (issue 33)
    ('--lr-decay-at', 0, None, 'int'),
    ('--lr-decay-factor', 0.1, None, 'float'),
    ('--grad-clip', 10.0, None, 'float'),
    ('--seed', 0, None, 'int'),
    ('--eval-every', 10000, None, 'int'),
    ('--eval-episodes', 400, None, 'int'),
    ('--checkpoint-every', 5000, None, 'int'),
    ('--device', 'auto', None, 'str'),
    ('--threads', 0, None, 'int'),
    ('--skip-nonfinite', False, None, 'store_true'),
    ('--max-minutes', 0.0, None, 'float'),  # added since b2b607d: a time budget (issue 20)
    ('--out', 'runs/mann', None, 'str'),
    ('--resume', False, None, 'store_true'),
    ('--overwrite', False, None, 'store_true'),
    ('--init-from', None, None, 'str'),
    ('--no-progress', False, None, 'store_true'),
    ('--final-eval', 1000, None, 'int'),
]
# flags renamed since, each kept as a deprecated spelling: old -> new
RENAMED = {"--split": "--class-split"}


def flag_rows(parser) -> tuple[set, dict]:
    rows, deprecated = set(), {}
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if isinstance(a, DeprecatedSpelling):
            deprecated[" ".join(a.option_strings)] = a.new_flag
            continue
        kind = ("bool" if isinstance(a, argparse.BooleanOptionalAction)
                else "store_true" if isinstance(a, argparse._StoreTrueAction)
                else a.type.__name__ if a.type else "str")
        rows.add((" ".join(a.option_strings), a.default, tuple(a.choices) if a.choices else None, kind))
    return rows, deprecated


def test_train_flags_are_todays():
    rows, deprecated = flag_rows(train_cli.train_parser())
    expected = {(RENAMED.get(flags, flags), default, choices, kind) for flags, default, choices, kind in TODAY}
    assert rows == expected, f"missing: {sorted(expected - rows)}; new: {sorted(rows - expected)}"
    assert deprecated == RENAMED


def test_every_config_flag_sets_its_field():
    flags = train_cli.config_flags()
    every_field = {(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    set_by_training = {("model", "weights_hash"), ("model", "feature_dim")}
    assert {(section, name) for section, name, _ in flags.values()} == every_field - set_by_training
    args = train_cli.parse_train_args(["--read-heads", "2", "--class-split", "lake", "--no-rotations"])
    cfg = train_cli.config_from_args(args)
    assert cfg.model.num_read_heads == 2 and cfg.data.split == "lake" and cfg.data.rotations is False


def test_old_split_spelling_is_a_deprecated_alias(capsys):
    cfg = train_cli.config_from_args(train_cli.parse_train_args(["--split", "lake"]))
    assert cfg.data.split == "lake"
    err = capsys.readouterr().err
    assert err.strip() == "note: --split lake is deprecated; use --class-split lake"
    assert "--split" not in train_cli.train_parser().format_help()
    args = train_cli.parse_train_args(["--split", "lake", "--resume"])
    assert args.explicit == {"class_split"}


def test_config_file_keys_old_and_new(tmp_path):
    for key in ("split", "class_split"):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({key: "lake", "data": {"image_size": 12}, "out": "R"}))
        args = train_cli.parse_train_args(["-c", str(path)])
        cfg = train_cli.config_from_args(args)
        assert cfg.data.split == "lake" and cfg.data.image_size == 12 and args.out == "R"


@pytest.mark.parametrize("argv", [["--split", "lake", "--class-split", "santoro"]])
def test_both_spellings_at_once_is_an_error(argv, capsys):
    assert train_cli.main([*argv, "--no-progress"]) == 2
    assert "give --class-split only" in capsys.readouterr().err


# ------------------------------------------------------------ the other commands' shared flags

def test_classes_and_its_old_spelling_in_evaluate_and_knn(capsys):
    from fewshot_mann.cli.common import parse_checked
    from fewshot_mann.errors import UserError
    from fewshot_mann.cli.evaluate import evaluate_parser
    from fewshot_mann.cli.knn import knn_parser

    for parser, base in ((evaluate_parser, ["--checkpoint", "C"]), (knn_parser, [])):
        args = parse_checked(parser(), [*base, "--split", "train"])
        assert args.classes == "training"
        assert capsys.readouterr().err.strip() == "note: --split train is deprecated; use --classes training"
        assert parse_checked(parser(), [*base, "--classes", "validation"]).classes == "validation"
        with pytest.raises(UserError, match="give --classes only"):
            parse_checked(parser(), [*base, "--split", "test", "--classes", "test"])
        assert "--split " not in parser().format_help() and "[--split" not in parser().format_help().replace("[--split-seed", "")


def test_kshot_scores_the_classes_asked_for():
    from fewshot_mann.cli.common import classes_option, parse_checked
    from fewshot_mann.cli.kshot import parser

    assert classes_option(parse_checked(parser(), ["--checkpoint", "C"])) == "test"
    assert classes_option(parse_checked(parser(), ["--checkpoint", "C", "--classes", "held-out"])) == "test"
    assert classes_option(parse_checked(parser(), ["--checkpoint", "C", "--classes", "validation"])) == "validation"


@pytest.mark.parametrize("argv,needle", [
    (["kshot", "--checkpoint", "C", "--shots", "1", "0"], "--shots must be at least 1"),
    (["kshot", "--checkpoint", "C", "--adapt", "-1"], "--adapt must be >= 0"),
    (["predict", "--checkpoint", "C", "--support", "s", "--query", "q", "--orders", "0"], "--orders must be at least 1"),
    (["predict", "--checkpoint", "C", "--support", "s", "--query", "q", "--threshold", "2"], "--threshold must be"),
    (["bench", "--rounds", "0"], "--rounds must be at least 1"),
    (["bench", "--seconds", "0"], "--seconds must be > 0"),
    (["knn", "--split-seed", "-1"], "--split-seed must be in [0, 2**63)"),
    (["inspect", "F", "--channels", "2"], "--channels must be 1 or 3"),
])
def test_each_flag_is_checked_before_any_work(argv, needle, capsys):
    from fewshot_mann.cli import main as cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_dispatcher_lists_every_verb_and_the_report_slot(capsys):
    from fewshot_mann.cli import main as cli

    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "report    regenerate the reports' tables and plots" in out
    assert set(cli.VERBS) == {"train", "evaluate", "inspect", "predict", "bench", "knn", "export", "kshot",
                              "models", "cache", "report", "pretrain", "serve"}
    assert cli.main(["nope"]) == 2


def test_engine_and_data_do_not_import_cli():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "fewshot_mann"
    for path in [*root.glob("engine/*.py"), *root.glob("data/*.py"), *root.glob("models/*.py"), *root.glob("memory/**/*.py")]:
        assert "fewshot_mann.cli" not in path.read_text(), path
