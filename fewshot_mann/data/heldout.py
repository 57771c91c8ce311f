"""Held-out classes that stay held out.

Every checkpoint written by ``train`` records the class names it trained on, was checked on
(validation) and left for testing (``ckpt["classes"]``), and, for folder datasets, the
training images (``ckpt["train_images"]``, ``image_record.py``; older ones: ``ckpt["train_digests"]``). ``evaluate``, ``kshot``, ``knn``
and ``predict`` hold what they are asked to score against that record: scoring trained
classes or images as "held-out" is refused by default (one line) and warned about otherwise.
"""
from __future__ import annotations

import sys

from fewshot_mann.data import image_record
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.errors import DataError

CLASS_CHOICES = ("test", "held-out", "validation", "training")  # held-out = test


def normalise(kind: str) -> str:
    """``--classes`` value -> the JSON ``"classes"`` value: test, validation or training."""
    return {"held-out": "test", "train": "training"}.get(kind, kind)


def recorded_classes(ckpt: dict) -> dict | None:
    """The checkpoint's ``{"train", "validation", "test"}`` class lists, or None (older checkpoints)."""
    rec = ckpt.get("classes")
    if isinstance(rec, dict) and all(isinstance(rec.get(k), list) for k in ("train", "validation", "test")):
        return rec
    return None


def trained_overlap(ckpt: dict, names: list[str], digests=None) -> tuple[list[str], int]:
    """(scored class names the model trained on, number of scored images it trained on)."""
    rec = recorded_classes(ckpt)
    trained = set(rec["train"]) if rec else set()
    classes = sorted(set(names) & trained)
    images = image_record.seen_count(ckpt, digests) if digests is not None else 0
    return classes, images


def check_scored(ckpt: dict, bank: ClassBank, kind: str, *, allow: bool = False, digests=None) -> None:
    """Refuse (``kind == "test"``, unless ``allow``) or warn when the classes or images to be
    scored include ones the checkpoint trained on; say when the checkpoint has no record."""
    if kind == "training":
        return
    if recorded_classes(ckpt) is None:
        if first_time(ckpt, "class-records"):
            print("note: this checkpoint predates class records, so fewshot-mann cannot check that the scored "
                  "classes were not trained on (said once per checkpoint)", file=sys.stderr)
        return
    classes, images = trained_overlap(ckpt, bank.names, digests)
    if not classes and not images:
        return
    parts = []
    if classes:
        parts.append(f"{len(classes)} of the {bank.num_classes} scored classes (e.g. {classes[0]!r})")
    if images:
        parts.append(f"{images} of the images")
    overlap = f"{' and '.join(parts)} are ones this model trained on"
    if kind == "test" and not allow:
        raise DataError(f"{overlap}, so the accuracy would not be held-out; score other classes, or pass "
                        "--allow-trained-classes to score them anyway")
    print(f"warning: {overlap}: not a held-out result", file=sys.stderr)


def first_time(ckpt: dict, note: str) -> bool:
    """Whether ``note`` has not been given for this checkpoint yet (its config, command and training length),
    remembered in the cache folder's ``notes-given.json``; True (say it) whenever that file cannot be used."""
    import hashlib
    import json

    from fewshot_mann.data.omniglot import cache_dir
    from fewshot_mann.fileio import atomic_write_text

    key = note + ":" + hashlib.sha256(json.dumps([ckpt.get("config"), ckpt.get("command"), ckpt.get("episodes_done")],
                                                 sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir() / "notes-given.json"
    try:
        given = json.loads(path.read_text()) if path.is_file() else []
        if not isinstance(given, list):
            given = []
    except (OSError, ValueError):
        given = []
    if key in given:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps((given + [key])[-1000:]))
    except OSError:
        pass
    return True


def bank_digests(parts, bank: ClassBank) -> list[str] | None:
    """The image digests of ``bank``'s classes (folder datasets), from a ``SplitBanks``."""
    if not parts.digests:
        return None
    return [d for n in bank.names for d in parts.digests.get(n, [])]
