"""The class split of a folder dataset: training, validation and test classes, pairwise disjoint.

Test classes come from a separate ``--test-root`` folder, or ``--test-classes`` as a fraction
(default ``DEFAULT_TEST_FRACTION``) or a comma-separated list of class names, or ``all``
(cross-domain evaluation: every class is held out). A fraction ranks classes by SHA-256 of
``"<seed>/<class name>"`` (seed = ``cfg.train.seed``) and holds out the first
``round(fraction * classes)``. Validation classes (for every in-training check and choice)
come from the remaining classes the same way, ranked by ``"validation/<seed>/<class name>"``
(``--validation-classes``, default ``DEFAULT_VALIDATION_FRACTION`` of all classes, or names,
or ``none``). The split is a pure function of the config and the class names; the checkpoint
also records the three class lists and the training images' digests, so evaluation scores the
recorded test classes even after classes were added to the folder, and refuses to call a
trained class held out.
"""
from __future__ import annotations

import hashlib
import os

from fewshot_mann.config import Config
from fewshot_mann.data.bank import ClassBank, SplitBanks, empty_bank
from fewshot_mann.data.folder import FolderData, load_folder, report_problems, warn
from fewshot_mann.data.images import ImageReader, pixel_reader
from fewshot_mann.data.scan import Problem
from fewshot_mann.data.wording import instances_name, instances_option, lower_instances
from fewshot_mann.errors import DataError, UserError
from fewshot_mann.fileio import atomic_write_json

DEFAULT_TEST_FRACTION = 0.3
DEFAULT_VALIDATION_FRACTION = 0.2


def too_few_images(bank: ClassBank, instances: int) -> list[Problem]:
    """One problem per class with fewer than ``instances`` usable images."""
    return [Problem("too-few-images", name + "/",
                    f"{int(n)} usable image(s); an episode with {instances_option(instances)} needs {instances} "
                    f"(class skipped; lower {lower_instances()} or add images)")
            for name, n in zip(bank.names, bank.counts) if n < instances]


def drop_small_classes(bank: ClassBank, instances: int, where: str, report=warn) -> ClassBank:
    small = too_few_images(bank, instances)
    for p in small:
        report(f"skipped {where} class {p.describe()}")
    if not small:
        return bank
    return bank.subset([i for i, n in enumerate(bank.counts) if n >= instances])


def drop_digests(data: FolderData, digests: set[str]) -> ClassBank:
    """``data.bank`` without the images whose file digest is in ``digests`` (empty classes removed)."""
    groups, names = [], []
    for c, name in enumerate(data.bank.names):
        lo, hi = data.bank.offsets[c], data.bank.offsets[c] + data.bank.counts[c]
        keep = [i for i in range(lo, hi) if data.digests[i] not in digests]
        if keep:
            groups.append(data.bank.images[keep])
            names.append(name)
    return ClassBank.from_groups(groups, names)


def parse_test_classes(spec) -> tuple[str, object] | None:
    """``--test-classes`` -> None, ("all", None), ("fraction", f) or ("names", [...])."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    text = str(spec).strip()
    if text.lower() == "all":
        return ("all", None)
    try:
        fraction = float(text)
    except ValueError:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise UserError(f"--test-classes {text!r} names no classes") from None
        return ("names", names)
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--test-classes {text}: a fraction must be between 0 and 1 (e.g. 0.3), "
                        "or give class names separated by commas")
    return ("fraction", fraction)


def choose_test_classes(names: list[str], spec, seed: int, where: str = "the folder") -> list[str]:
    """Held-out class names (sorted) for a parsed ``--test-classes`` spec; see the module docstring."""
    parsed = spec if isinstance(spec, tuple) or spec is None else parse_test_classes(spec)
    kind, value = parsed if parsed is not None else ("fraction", DEFAULT_TEST_FRACTION)
    if kind == "all":
        return sorted(names)
    if kind == "names":
        missing = [n for n in value if n not in names]
        if missing:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise DataError(f"--test-classes names {missing[0]!r}, which is not a usable class of {where} "
                            f"(classes: {shown})")
        return sorted(set(value))
    if len(names) < 2:
        raise DataError(f"{where} has {len(names)} usable class(es); a class split needs at least 2 "
                        "(or give held-out classes in a separate --test-root folder)")
    held = max(1, min(len(names) - 1, int(value * len(names) + 0.5)))
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode("utf-8", "surrogateescape")).hexdigest())
    return sorted(ranked[:held])


def parse_validation_classes(spec) -> tuple[str, object] | None:
    """``--validation-classes`` -> None (the default fraction), ("none", None), ("fraction", f) or ("names", [...])."""
    if spec is not None and str(spec).strip().lower() in ("none", "0", "0.0"):
        return ("none", None)
    parsed = parse_test_classes(spec)
    if parsed is not None and parsed[0] == "all":
        raise UserError("--validation-classes all would leave nothing to train on; give a fraction, names or none")
    return parsed


def choose_validation_classes(names: list[str], spec, seed: int, test: set[str], where: str) -> list[str]:
    """Validation class names (sorted), drawn from the classes that are not test classes."""
    parsed = parse_validation_classes(spec)
    kind, value = parsed if parsed is not None else ("fraction", DEFAULT_VALIDATION_FRACTION)
    rest = [n for n in names if n not in test]
    if kind == "none":
        return []
    if kind == "names":
        bad = [n for n in value if n not in rest]
        if bad:
            why = "a test class" if bad[0] in test else f"not a usable class of {where}"
            raise DataError(f"--validation-classes names {bad[0]!r}, which is {why}")
        chosen = sorted(set(value))
    else:
        count = min(len(rest) - 1, int(value * len(names) + 0.5))
        ranked = sorted(rest, key=lambda n: hashlib.sha256(
            f"validation/{seed}/{n}".encode("utf-8", "surrogateescape")).hexdigest())
        chosen = sorted(ranked[:max(0, count)])
    if len(chosen) >= len(rest):
        raise DataError(f"--validation-classes leaves no class of {where} to train on")
    return chosen


def _digests_by_class(data: FolderData) -> dict[str, list[str]]:
    b = data.bank
    return {n: data.digests[b.offsets[c]:b.offsets[c] + b.counts[c]].tolist() for c, n in enumerate(b.names)}


def _subset_names(bank: ClassBank, names) -> ClassBank:
    names = set(names)
    return bank.subset([i for i, n in enumerate(bank.names) if n in names])


def load_folder_banks(cfg: Config, progress: bool = True, report=warn,
                      reader: ImageReader | None = None) -> tuple[ClassBank, ClassBank]:
    """(meta-training bank, held-out test bank) of a folder dataset, classes disjoint; ``reader``:
    the raw-pixel reader of ``cfg.data`` (``pixel_reader``) where not given."""
    parts = load_folder_parts(cfg, reader or pixel_reader(cfg.data), progress, report)
    return parts.train, parts.test


def load_folder_parts(cfg: Config, reader: ImageReader, progress: bool = True, report=warn,
                      recorded: dict | None = None, cache: bool = True) -> SplitBanks:
    """Training, validation and test banks of a folder dataset, classes pairwise disjoint, each image
    read by ``reader``; ``cache``: use the decode cache.

    ``recorded``: the class lists a checkpoint trained with (``{"train", "validation", "test"}``);
    given, the test and validation classes are those, whatever the folder holds now (classes
    added since then never move a trained class into the held-out set).
    Skippable problems are reported through ``report`` (one line per file or class);
    unskippable ones raise ``DataError``/``UserError`` with one line saying what to do.
    """
    d, e = cfg.data, cfg.episodes
    if not d.data_root:
        raise UserError("--dataset folder needs --data-root DIR (a folder with one sub-folder of images per class)")
    spec = parse_test_classes(d.test_classes)
    if d.test_root and spec is not None:
        raise UserError("give held-out classes either as a --test-root folder or with --test-classes, not both")
    kw = dict(reader=reader, progress=progress, cache=cache)
    data = load_folder(d.data_root, option="--data-root", **kw)
    report_problems(data, "--data-root", report)
    if d.test_root:
        held = load_folder(d.test_root, option="--test-root", **kw)
        report_problems(held, "--test-root", report)
        pool, test_bank, digests = _apart(data, held, report)
        where, test_names = f"--test-root {d.test_root}", set()
    else:
        pool, digests = data.bank, _digests_by_class(data)
        test_names, how = _test_names(cfg, pool, spec, recorded, report)
        test_bank = _subset_names(pool, test_names)
        where = f"{how} of the {pool.num_classes} classes in {d.data_root}"
    if recorded is not None:
        val_names = set(recorded.get("validation", [])) & set(pool.names) - test_names
        train_names = set(recorded.get("train", [])) & set(pool.names)
    elif len(test_names) == pool.num_classes:  # --test-classes all: nothing is trained on
        val_names, train_names = set(), set()
    else:
        val_names = set(choose_validation_classes(pool.names, d.validation_classes, cfg.train.seed, test_names,
                                                  f"--data-root {d.data_root}"))
        train_names = set(pool.names) - test_names - val_names
    train_bank = drop_small_classes(_subset_names(pool, train_names), e.instances, "--data-root", report)
    val_bank = drop_small_classes(_subset_names(pool, val_names), e.instances, "validation", report)
    test_bank = _enough_held_out(cfg, test_bank, where, report)
    if val_bank.num_classes == 0:
        val_bank = empty_bank(d.channels, d.image_size)
    return SplitBanks(train_bank, val_bank, test_bank, digests)


def _apart(data: FolderData, held: FolderData, report) -> tuple[ClassBank, ClassBank, dict[str, list[str]]]:
    """(training pool, test bank, digests by training class) of a ``--data-root`` and a ``--test-root``
    folder: no class in both, and a file in both is label leakage, skipped from both."""
    both = sorted(set(data.bank.names) & set(held.bank.names))
    if both:
        raise DataError(f"class {both[0]!r} is in both --data-root and --test-root ({len(both)} shared); "
                        "held-out classes must be ones the model never trained on")
    shared = set(data.digests.tolist()) & set(held.digests.tolist())
    if shared:
        report(f"{len(shared)} file(s) appear in both --data-root and --test-root (label leakage); skipped "
               "from both (run `fewshot-mann inspect` on each folder to list them)")
    digests = {n: [x for x in v if x not in shared] for n, v in _digests_by_class(data).items()}
    return drop_digests(data, shared), drop_digests(held, shared), digests


def _test_names(cfg: Config, pool: ClassBank, spec, recorded: dict | None, report) -> tuple[set[str], str]:
    """(test class names, how they were chosen) of one folder: a checkpoint's recorded ones, or ``--test-classes``."""
    d = cfg.data
    if recorded is not None:
        test_names = set(recorded.get("test", [])) & set(pool.names)
        gone = len(set(recorded.get("test", []))) - len(test_names)
        if gone:
            report(f"{gone} of the checkpoint's {len(recorded['test'])} test classes are no longer in "
                   f"{d.data_root}; scoring the other {len(test_names)}")
        return test_names, "the checkpoint's recorded test classes"
    test_names = set(choose_test_classes(pool.names, spec, cfg.train.seed, f"--data-root {d.data_root}"))
    return test_names, f"--test-classes {d.test_classes if spec is not None else f'{DEFAULT_TEST_FRACTION} (the default)'}"


def _enough_held_out(cfg: Config, test_bank: ClassBank, where: str, report) -> ClassBank:
    """The held-out classes an episode can use; a ``DataError`` saying what to do where they are fewer than ``--ways``."""
    e = cfg.episodes
    held_before = test_bank.num_classes
    test_bank = drop_small_classes(test_bank, e.instances, "held-out", report)
    if test_bank.num_classes < e.ways:
        small = held_before - test_bank.num_classes
        raise DataError(
            f"--ways {e.ways} needs {e.ways} held-out classes with at least {e.instances} images each ({instances_name()}), "
            f"but {where} gives {test_bank.num_classes}"
            + (f" ({small} more have fewer than {e.instances} images)" if small else "")
            + f"; hold out more classes, lower --ways or {lower_instances()}, or add images "
            "(`fewshot-mann inspect DIR` lists what is usable)")
    return test_bank


def split_record(cfg: Config, train_bank: ClassBank, test_bank: ClassBank, val_bank: ClassBank | None = None) -> dict:
    """The class split as JSON-ready data: class names and image counts only, never file names."""
    d = cfg.data
    return {
        "dataset": "folder",
        "data_root": d.data_root,
        "test_root": d.test_root,
        "test_classes": d.test_classes if d.test_classes is not None else DEFAULT_TEST_FRACTION,
        "seed": cfg.train.seed,
        "image_size": d.image_size,
        "channels": d.channels,
        "resize": d.resize,
        "validation_classes": d.validation_classes if d.validation_classes is not None
        else DEFAULT_VALIDATION_FRACTION,
        "train": {n: int(c) for n, c in zip(train_bank.names, train_bank.counts)},
        "validation": {n: int(c) for n, c in zip(val_bank.names, val_bank.counts)} if val_bank is not None else {},
        "test": {n: int(c) for n, c in zip(test_bank.names, test_bank.counts)},
    }


def write_split(path: str | os.PathLike, cfg: Config, train_bank: ClassBank, test_bank: ClassBank,
                val_bank: ClassBank | None = None) -> None:
    atomic_write_json(path, split_record(cfg, train_bank, test_bank, val_bank))
