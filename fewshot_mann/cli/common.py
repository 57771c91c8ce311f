"""What every command shares: user errors as one line (``run_guarded``), the shared flags
(one definition and one check each: ``add_shared_flags``, ``add_flag``, ``parse_checked``),
deprecated spellings of renamed flags, and ``set_threads``.

A flag's check travels with its argparse action (``action.problem``): ``parse_checked``
applies every check of the parser right after parsing, before any work starts, so a bad
``--threads`` is reported the same way by every command.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fewshot_mann import limits
from fewshot_mann.config import DATASETS, INK_FRAMES, POLARITIES, RESIZE_POLICIES, SECTIONS
from fewshot_mann.options import field_problem
from fewshot_mann.data.heldout import CLASS_CHOICES, normalise
from fewshot_mann.errors import UserError, first_line, is_allocation_error
from fewshot_mann.fileio import check_output_path
from fewshot_mann.text import printable


def fail(message: str, code: int = 2) -> int:
    """One line, ``error: ...``, whatever the message quotes (a name with a newline, tab or terminal
    escape is shown escaped: ``text.printable``)."""
    print(f"error: {printable(message)}", file=sys.stderr)
    return code


def run_guarded(fn, argv) -> int:
    """Run a sub-command; user errors become one line and exit status 2."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \udcXX, never fails
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    try:
        return int(fn(sys.argv[1:] if argv is None else list(argv)) or 0)
    except UserError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        try:  # point stdout at /dev/null so the flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except MemoryError:
        return fail("out of memory; try a smaller --batch-size or --image-size")
    except OSError as exc:  # a path the system refuses wherever it is met (too long: ENAMETOOLONG)
        if exc.filename is None:
            raise
        name = str(exc.filename)
        return fail(f"cannot use {name if len(name) <= 200 else name[:200] + '...'}: {exc.strerror or exc}")
    except RuntimeError as exc:  # torch reports a failed allocation as a RuntimeError
        if is_allocation_error(exc):  # the whole first line: the size asked for is the useful part
            return fail(f"out of memory ({first_line(exc)}); try a smaller --batch-size, --image-size or model")
        raise


# ------------------------------------------------------------------------------------ checks

def at_least(low: int, flag: str, *, high: int):
    """A check: an integer in [``low``, ``high``] (every count has an upper bound: ``limits``)."""
    def problem(value) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            return f"{flag} must be {'at least 1' if low == 1 else f'>= {low}'} (got {value!r:.40})"
        if value > high:
            return f"{flag} must be at most {high:,} (got {limits.shown(value)})"
        return None
    return problem


def output_file(flag: str, suffixes: tuple[str, ...] | None = None):
    """A check: a file can be written at the path (``fileio.check_output_path``; it raises)."""
    def problem(value) -> None:
        check_output_path(value, flag, suffixes)
    return problem


def config_rule(section: str, name: str):
    """The check of config field ``section.name`` (its ``option`` metadata), for another command's flag."""
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return lambda value: field_problem(f, value)


def config_help(section: str, name: str) -> str | None:
    return next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name).metadata["help"]


def add_flag(parser, *names: str, problem=None, **kwargs) -> argparse.Action:
    """``parser.add_argument(*names, **kwargs)`` with the flag's check (``value -> message | None``,
    or raising ``UserError``) attached for ``parse_checked``."""
    action = parser.add_argument(*names, **kwargs)
    action.problem = problem
    return action


PLOT_SUFFIXES = (".png", ".pdf", ".svg")

# One definition of each flag several commands share: argparse keywords, with its check as
# "problem". A command may give its own "default" and "help" (add_shared_flags keywords).
# device, threads, seed: the train options' own help and check (config.py).
SHARED_FLAGS = {
    "device": {"default": "auto", "help": config_help("train", "device"), "problem": config_rule("train", "device")},
    "threads": {"type": int, "default": 0, "help": config_help("train", "threads"),
                "problem": config_rule("train", "threads")},
    "seed": {"type": int, "default": 0, "help": config_help("train", "seed"), "problem": config_rule("train", "seed")},
    "batch_size": {"type": int, "default": 250, "problem": at_least(1, "--batch-size", high=limits.MAX_BATCH)},
    "episodes": {"type": int, "default": 1000, "problem": at_least(1, "--episodes", high=limits.MAX_EVAL_EPISODES)},
    "ways": {"type": int, "default": None, "problem": at_least(1, "--ways", high=limits.MAX_WAYS)},
    "instances": {"type": int, "default": None, "problem": at_least(1, "--instances", high=limits.MAX_INSTANCES)},
    "image_size": {"type": int, "default": None, "problem": config_rule("data", "image_size")},
    "channels": {"type": int, "default": None, "help": config_help("data", "channels"),
                 "problem": config_rule("data", "channels")},
    "dataset": {"choices": DATASETS, "default": None},
    "data_root": {"default": None, "help": config_help("data", "data_root")},
    "test_classes": {"default": None, "help": "folder datasets: the classes to evaluate on: all, a fraction or a comma list"},
    "classes": {"choices": CLASS_CHOICES, "default": None,
                "help": "which classes to score: test (= held-out; the default), validation, or training"},
    "allow_trained_classes": {"action": "store_true",
                              "help": "score test classes even where the checkpoint records training on some of them"},
    "finetune": {"type": int, "nargs": "?", "const": limits.FINETUNE_STEPS, "default": 0, "metavar": "STEPS",
                 "problem": at_least(0, "--finetune", high=limits.MAX_FINETUNE_STEPS),
                 "help": "timm backbone checkpoints: fine-tune the backbone's last layers to the support images "
                         f"(augmented views; never a query) for STEPS steps first; bare: {limits.FINETUNE_STEPS}; 0: off"},
    "resize": {"choices": RESIZE_POLICIES, "default": None,
               "help": "override the checkpoint's resize policy (auto: the backbone's own for a backbone, else pad)"},
    "polarity": {"choices": POLARITIES, "default": None, "help": "override the checkpoint's polarity (raw pixels)"},
    "ink_frame": {"choices": INK_FRAMES, "default": None,
                  "help": "override the checkpoint's ink framing (raw pixels; see train --help)"},
    "embed_precision": {"choices": ("auto", "fp32", "bf16"), "default": None,
                        "help": "override the checkpoint's backbone precision (auto: bfloat16 where the CPU has "
                                "avx512_bf16; fp32 for float32 features)"},
    "no_feature_cache": {"action": "store_true",
                         "help": "privacy: neither read nor write the caches of features or decoded images; nothing "
                                 "derived from your images is written outside the paths you name"},
    "json": {"default": None, "metavar": "PATH", "help": "write the results as JSON", "problem": output_file("--json")},
    "csv": {"default": None, "metavar": "PATH", "help": "write the results as CSV", "problem": output_file("--csv")},
    "plot": {"default": None, "metavar": "PATH", "help": "write a PNG of accuracy by instance",
             "problem": output_file("--plot", PLOT_SUFFIXES)},
    "no_progress": {"action": "store_true", "help": "no progress bar"},
}


def apply_input_overrides(cfg, args) -> None:
    """A checkpoint-reading command's overrides of how images become inputs: ``--resize``, ``--polarity``,
    ``--ink-frame`` (those the command has), then ``--embed-precision`` resolved (``set_embed_precision``)."""
    for name in ("resize", "polarity", "ink_frame"):
        if getattr(args, name, None):
            setattr(cfg.data, name, getattr(args, name))
    set_embed_precision(cfg, args.embed_precision)


def set_embed_precision(cfg, choice: str | None) -> None:
    """``--embed-precision``: the checkpoint's choice, or ``choice``; for a backbone resolved to the precision
    the features will have (fp32 or bf16), so a written config says which it was."""
    from fewshot_mann.config import is_backbone

    if choice:
        cfg.model.embed_precision = choice
    if is_backbone(cfg.model.encoder):
        from fewshot_mann.models.features import embed_precision
        cfg.model.embed_precision = embed_precision(cfg.model)


def add_shared_flags(parser, *names: str, **overrides) -> None:
    """Add the shared flags ``names`` (``SHARED_FLAGS``) to ``parser`` or an argument group.
    ``NAME=value`` gives this command's default, ``NAME_help=text`` its help, ``NAME_nargs`` nargs."""
    for name in names:
        kwargs = dict(SHARED_FLAGS[name])
        for key in ("help", "nargs"):
            if f"{name}_{key}" in overrides:
                kwargs[key] = overrides[f"{name}_{key}"]
        if name in overrides:
            kwargs["default"] = overrides[name]
        add_flag(parser, f"--{name.replace('_', '-')}", **kwargs)
    if "classes" in names:  # evaluate and knn once took the classes to score as --split test|train
        add_deprecated(parser, "--split", "--classes", "classes", choices=("test", "train"), value_map=normalise)


# --------------------------------------------------------------------- deprecated spellings

class DeprecatedSpelling(argparse.Action):
    """The old spelling of a renamed flag: sets the new flag's value and leaves a one-line
    notice, printed by ``parse_checked``. Hidden from ``--help``."""

    def __init__(self, option_strings, dest, new_flag: str, value_map=None, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new_flag, self.value_map = new_flag, value_map

    def __call__(self, parser, namespace, values, option_string=None):
        new_value = self.value_map(values) if self.value_map else values
        setattr(namespace, self.dest, new_value)
        notes = getattr(namespace, "deprecated_spellings", None) or []
        notes.append((option_string, values, self.new_flag, new_value))
        namespace.deprecated_spellings = notes


def add_deprecated(parser, old_flag: str, new_flag: str, dest: str, **kwargs) -> argparse.Action:
    """``old_flag`` as a deprecated spelling of ``new_flag`` (whose argparse dest is ``dest``)."""
    return parser.add_argument(old_flag, dest=dest, action=DeprecatedSpelling, new_flag=new_flag,
                               default=argparse.SUPPRESS, **kwargs)


def _report_deprecated(args, argv) -> None:
    for old, value, new, new_value in getattr(args, "deprecated_spellings", None) or []:
        if any(a == new or a.startswith(new + "=") for a in argv):
            raise UserError(f"give {new} only ({old} is its deprecated spelling)")
        print(f"note: {old} {value} is deprecated; use {new} {new_value}", file=sys.stderr)
    if hasattr(args, "deprecated_spellings"):
        del args.deprecated_spellings


# ------------------------------------------------------------------------------------ parse

def parse_checked(parser: argparse.ArgumentParser, argv, skip: tuple[str, ...] = ()):
    """``parser.parse_args(argv)``, then the notices of deprecated spellings, then every flag's
    check (``add_flag``'s ``problem``) in the parser's order: the first problem is one line."""
    argv = list(argv)
    args = parser.parse_args(argv)
    _report_deprecated(args, argv)
    for action in parser._actions:
        rule = getattr(action, "problem", None)
        value = getattr(args, action.dest, None)
        if rule is None or action.dest in skip or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:  # kshot --ways 5 20: item by item
            problem = rule(item)
            if problem:
                raise UserError(problem)
    return args


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The dests given on the command line itself (not defaults)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    known, _ = parser.parse_known_args(argv)
    return set(vars(known)) - {"deprecated_spellings"}


def set_threads(threads: int) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def classes_option(args) -> str:
    """``--classes`` (test, held-out, validation, training) -> test, validation or training."""
    return normalise(args.classes or "test")
