"""``fewshot-mann train`` (``train.py``): meta-train a model on label-shifted episodes.

Every config option's flag is generated from the config fields' ``option`` metadata
(config.py), one argument group per config section; the flags here are the run's own
(``--out``, ``--resume``, ...). ``-c config.json`` values become the defaults, flags override.
"""
from __future__ import annotations

import argparse
import sys
import time
import typing
from pathlib import Path

from fewshot_mann import limits
from fewshot_mann.cli.common import (add_deprecated, add_flag, add_shared_flags, at_least, explicit_flags,
                                     parse_checked, run_guarded)
from fewshot_mann.config import OBSOLETE_KEYS, SECTIONS, Config, check_type, flagged_fields
from fewshot_mann.options import dest_of, kind_of
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import read_json_file

GROUP_TITLES = {"data": "data", "episodes": "episodes", "model": "model", "train": "training"}


def config_flags() -> dict[str, tuple[str, str, str]]:
    """dest -> (section, field, flag) of every flag that sets a config field."""
    return {dest_of(flag): (section, f.name, flag) for section, f, flag in flagged_fields()}


def _add_config_flag(group, section: str, f, flag: str) -> None:
    meta = f.metadata
    base, _ = kind_of(typing.get_type_hints(SECTIONS[section])[f.name])
    kwargs = {"default": f.default, "help": meta["help"]}
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if meta["negatable"] else "store_true"
    else:
        if base in (int, float):
            kwargs["type"] = base
        if meta["choices"] is not None and base is str:  # int choices (--channels): checked by validate
            kwargs["choices"] = meta["choices"]
    group.add_argument(flag, **kwargs)
    for alias in meta["aliases"]:
        add_deprecated(group, alias, flag, dest_of(flag))


# flags of the run, not of the config: (group, flag, argparse keywords), each after its group's config flags
RUN_FLAGS = [
    ("data", "--download", {"action": "store_true", "help": "download Omniglot into --data-root through torchvision"}),
    ("run", "--out", {"default": "runs/mann", "help": "run directory"}),
    ("run", "--resume", {"action": "store_true",
                         "help": "continue the run in --out (starts it if it has no checkpoint)"}),
    ("run", "--overwrite", {"action": "store_true", "help": "replace a run already in --out"}),
    ("run", "--init-from", {"default": None, "metavar": "CHECKPOINT",
                            "help": "start from a trained checkpoint's weights"}),
]


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Meta-train a MANN (or a baseline) on label-shifted episodes.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", metavar="JSON", help="a JSON config whose values become the defaults")
    groups = {title: p.add_argument_group(title) for title in [*GROUP_TITLES.values(), "run"]}
    for section, f, flag in flagged_fields():
        _add_config_flag(groups[GROUP_TITLES[section]], section, f, flag)
    for title, flag, kwargs in RUN_FLAGS:
        groups[title].add_argument(flag, **kwargs)
    add_shared_flags(groups["model"], "no_feature_cache")  # one flag for every command that embeds images
    add_shared_flags(groups["run"], "no_progress")
    # obsolete: the torch.compile path was removed; a one-line notice, then ignored
    groups["model"].add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help=argparse.SUPPRESS)
    add_flag(groups["run"], "--final-eval", type=int, default=1000, metavar="EPISODES",
             problem=at_least(0, "--final-eval", high=limits.MAX_EVAL_EPISODES),
             help="at the end, score this many held-out (test-class) episodes as evaluate.py does and print "
                  "the table (0 = skip)")
    return p


def _flatten_config_file(path: str) -> dict:
    """A ``-c`` JSON file as flag defaults, every value type-checked (``config.check_type``).
    Keys: nested ``{"model": {"memory_slots": 128}}``, or flat flag names (``"read_heads"``,
    ``"split"``: a deprecated flag spelling is a key too) and ``"out"``."""
    raw = read_json_file(path, "config file")
    if isinstance(raw, dict) and "config" in raw and isinstance(raw["config"], dict):
        raw = raw["config"]
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    flags = config_flags()
    by_field = {(section, name): dest for dest, (section, name, _) in flags.items()}
    flat_keys = dict(flags)
    for _, f, flag in flagged_fields():
        for alias in f.metadata["aliases"]:
            flat_keys[dest_of(alias)] = flags[dest_of(flag)]
    flat = {}
    obsolete = {(section, key) for section, keys in OBSOLETE_KEYS.items() for key in keys}
    for key, value in raw.items():
        if isinstance(value, dict):  # nested: {"model": {"memory_slots": 128}}
            for sub, v in value.items():
                if (key, sub) in obsolete:
                    obsolete_notice(f"config file {path}: {key}.{sub}")
                    continue
                if (key, sub) not in by_field:
                    raise UserError(f"config file {path}: unknown key {key}.{sub:.60}")
                flat[by_field[(key, sub)]] = check_type(key, sub, v, f"config file {path}")
        else:
            dest = key.replace("-", "_").lstrip("_")
            if dest == "out":
                if not isinstance(value, str):
                    raise UserError(f"config file {path}: out must be a string (got {value!r:.60})")
                flat[dest] = value
            elif any(dest == k for _, k in obsolete):
                obsolete_notice(f"config file {path}: {key}")
            elif dest in flat_keys:
                section, name, flag = flat_keys[dest]
                flat[dest_of(flag)] = check_type(section, name, value, f"config file {path}")
            else:
                raise UserError(f"config file {path}: unknown key {key!r:.60}")
    return flat


def obsolete_notice(what: str) -> None:
    """One line for an option of an earlier release that is ignored now (only ``compile`` so far)."""
    print(f"note: {what} is deprecated and ignored (the torch.compile path was removed; "
          "--memory-backend picks the implementation)", file=sys.stderr)


def parse_train_args(argv):
    p = train_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config")
    known, _ = pre.parse_known_args(argv)
    from_file = _flatten_config_file(known.config) if known.config else {}
    p.set_defaults(**from_file)
    args = parse_checked(p, argv)
    if args.compile is not None:
        obsolete_notice("--compile" if args.compile else "--no-compile")
    # what the user asked for (command line or config file), for --resume to name what it ignores
    args.explicit = (explicit_flags(train_parser(), argv) | set(from_file)) & set(config_flags())
    return args


def config_from_args(args) -> Config:
    cfg = Config()
    for dest, (section, name, _) in config_flags().items():
        setattr(getattr(cfg, section), name, getattr(args, dest))
    cfg.validate()
    return cfg


def main(argv=None) -> int:
    return run_guarded(_train, argv)



def _train(argv) -> int:
    from fewshot_mann.engine.trainer import train

    from fewshot_mann.models.registry import check_size

    args = parse_train_args(argv)
    cfg = config_from_args(args)
    check_size(cfg)  # before the run folder is touched
    if args.download:
        from fewshot_mann.data.omniglot import default_data_root, download_omniglot
        root = Path(args.data_root) if args.data_root else default_data_root()
        download_omniglot(root)
        cfg.data.data_root = str(root)
    command = ["train.py", *argv]
    flags = config_flags()
    asked = {flags[dest][:2]: flags[dest][2] for dest in args.explicit}
    summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, command=command,
                    progress=not args.no_progress, init_from=args.init_from, asked=asked,
                    feature_cache=not args.no_feature_cache)
    if summary["interrupted"] is not None:
        return 130
    if summary.get("rank"):  # under torchrun, rank 0 reports
        return 0
    print(f"trained {summary['episodes_done']:,} episodes in {summary['train_seconds']:.0f} s; "
          f"checkpoint: {Path(args.out) / 'checkpoint.pt'}")
    if summary["last_eval"] and not args.final_eval:
        acc = " ".join(f"{100 * a:.1f}" for a in summary["last_eval"]["accuracy_by_instance"])
        print(f"validation accuracy by instance (%): {acc}")
    if args.final_eval:
        final_evaluation(Path(args.out) / "checkpoint.pt", args.final_eval, progress=not args.no_progress,
                         feature_cache=not args.no_feature_cache)
    return 0


def final_evaluation(checkpoint: Path, episodes: int, progress: bool, feature_cache: bool = True) -> dict:
    """The end of ``train``: the held-out table of ``evaluate.py --checkpoint C --episodes N``
    (seed 0), printed, and written to ``RUN/final_eval.json``."""
    from fewshot_mann.engine.loading import load_banks
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
    from fewshot_mann.engine.evaluation import evaluate, format_table
    from fewshot_mann.engine.trainer import resolve_device
    from fewshot_mann.fileio import atomic_write_json

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config_obj"]
    device = resolve_device(cfg.train.device)
    model = load_model_from_checkpoint(ckpt, device)
    _, test_bank = load_banks(cfg, progress=False, feature_cache=feature_cache)  # --no-feature-cache holds here too
    res = evaluate(model, test_bank, cfg.episodes, episodes=episodes, seed=0, device=device, progress=progress)
    res.pop("_per_episode", None)
    print(format_table(res, f"{cfg.model.model} on {test_bank.num_classes} held-out (test) classes"))
    atomic_write_json(checkpoint.parent / "final_eval.json",
                      {**res, "classes": "test", "class_names": list(test_bank.names),
                       "num_classes": test_bank.num_classes, "checkpoint": str(checkpoint),
                       "checkpoint_episodes": ckpt.get("episodes_done"), "date": time.strftime("%Y-%m-%d")})
    print(f"checkpoint: {checkpoint}  (evaluate again: python evaluate.py --checkpoint {checkpoint})")
    return res


if __name__ == "__main__":
    sys.exit(main())
