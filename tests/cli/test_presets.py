"""The committed presets (configs/*.json) are valid train configs and say what their names promise."""
from pathlib import Path

import pytest

from fewshot_mann.cli.train import config_from_args, parse_train_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = sorted(CONFIGS.glob("*.json"))


def test_there_are_presets():
    assert {p.name for p in PRESETS} >= {"table1.json", "table1-fast.json"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_each_preset_is_a_valid_table1_run(path):
    cfg = config_from_args(parse_train_args(["-c", str(path), "--out", "x"]))
    cfg.validate()
    assert (cfg.data.dataset, cfg.data.split, cfg.data.image_size) == ("omniglot", "santoro", 20)
    assert (cfg.episodes.ways, cfg.episodes.instances, cfg.episodes.labels) == (5, 10, "onehot")
    assert cfg.model.model == "mann" and cfg.model.key_strength
    assert cfg.train.max_minutes == 15  # the time-to-accuracy budget (issue 33, target 2)


def test_the_fast_preset_is_the_main_commands_learning_rate_with_a_drop():
    fast = config_from_args(parse_train_args(["-c", str(CONFIGS / "table1-fast.json"), "--out", "x"]))
    default = config_from_args(parse_train_args(["--out", "x"]))
    assert fast.train.lr == default.train.lr == 0.002
    assert fast.train.lr_decay_at == 360_000 and fast.train.lr_decay_factor == 0.1


def test_the_note_on_old_commands_names_flags_that_restore_the_old_defaults():
    """reports/ pages say how to rerun a command recorded before the defaults changed: its flags must give
    exactly the old values, and each of them must differ from today's (else the note is stale)."""
    import re

    from fewshot_mann.config_legacy import DEFAULTS_BEFORE_2026_12_07 as OLD, OLD_COMMANDS_NOTE

    flags = re.findall(r"`(--[^`]+)`", OLD_COMMANDS_NOTE)
    argv = [part for flag in flags for part in flag.split()]
    restored = config_from_args(parse_train_args([*argv, "--out", "x"]))
    today = config_from_args(parse_train_args(["--out", "x"]))
    sections = {"lr": "train", "episodes": "train", "key_strength": "model"}
    for name, value in OLD.items():
        assert getattr(getattr(restored, sections[name]), name) == value
        assert getattr(getattr(today, sections[name]), name) != value


def test_generated_pages_carry_the_note_on_old_commands():
    from fewshot_mann.config_legacy import OLD_COMMANDS_NOTE
    from fewshot_mann.reporting.memory_comparison import comparison_markdown
    from fewshot_mann.reporting.results import results_markdown

    assert OLD_COMMANDS_NOTE in comparison_markdown([])
    assert OLD_COMMANDS_NOTE in results_markdown(CONFIGS / "nowhere", [])
