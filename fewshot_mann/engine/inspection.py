"""``fewshot-mann inspect DIR``: what a class-per-folder dataset holds, and everything wrong with it.

Prints the classes, images per class, the sizes, modes and formats seen, and every problem:
unreadable or corrupt files, non-image files, files outside class folders, links out of
the folder, images too large to decode safely, empty class folders, the same file in two
classes (label leakage), and the episode checks training runs: classes with fewer images
than ``--instances``, fewer usable classes than ``--ways``, and too few held-out classes
for the class split (``--test-classes``, as in training). Training and evaluation run the
same checks (``class_split.load_folder_parts``): they skip what is skippable with a warning
and stop with one line otherwise.

The images are decoded into the same cache training uses (pass the same ``--image-size``,
``--channels`` and ``--resize`` to warm it for a run).

``--for kshot|predict`` (or ``--checkpoint C``, which also reads the images at that model's own
resolution, channels and resize, and defaults to ``--for kshot``) checks what that use needs instead
of training's episodes and class split: kshot, ``--ways`` classes with at least ``--shots`` +
``--queries`` images, every class held out; predict, a support folder of at least 2 classes.

Exit status: 0 = no problems, 1 = problems found (listed), 2 = the folder cannot be read
at all (missing, no class folders) or bad options.
"""
from __future__ import annotations


from fewshot_mann.errors import DataError, UserError
from fewshot_mann.text import printable
from fewshot_mann.data.class_split import DEFAULT_TEST_FRACTION, choose_test_classes, parse_test_classes, too_few_images
from fewshot_mann.data.folder import load_folder
from fewshot_mann.data.images import ImageReader
from fewshot_mann.data.scan import PROBLEM_KINDS, Problem


USES = ("train", "kshot", "predict")


def inspect_folder(root, *, ways: int = 5, instances: int = 10, image_size: int = 20, channels: int = 1,
                   resize: str = "pad", test_classes=None, seed: int = 0, progress: bool = False,
                   use: str = "train", reader: ImageReader | None = None) -> dict:
    """A JSON-ready report: {"root", "classes": [...], "problems": [...], "usable_classes", ...}.

    ``use``: what the folder is for (``USES``): "train" checks episodes and the class split; "kshot"
    needs ``ways`` classes of at least ``instances`` (shots + queries) images, every class held out;
    "predict" (a support folder) needs 2 classes of at least one image. ``reader``: a checkpoint's
    ``models.inputs.image_reader`` (the model's own resolution), instead of image_size / channels / resize."""
    if ways < 1 or instances < 1:
        raise UserError("--ways and --instances must be at least 1")
    if use not in USES:
        raise UserError(f"--for must be one of {', '.join(USES)} (got {use!r})")
    if use != "train":
        return _inspect_for_use(root, use, ways, instances, reader, progress)
    spec = parse_test_classes(test_classes)
    resize = "pad" if resize in ("auto", "backbone") else resize  # raw pixels: no backbone to ask
    reader = reader or ImageReader(image_size, channels, resize)
    data = load_folder(root, reader=reader, progress=progress, option="folder")
    bank = data.bank
    problems: list[Problem] = list(data.problems) + too_few_images(bank, instances)
    counts = dict(zip(bank.names, (int(c) for c in bank.counts)))
    classes = _class_rows(data, counts)
    usable = [n for n, c in counts.items() if c >= instances]
    split = None
    if len(usable) < ways:
        problems.append(Problem("too-few-classes", "",
                                f"{len(usable)} class(es) have at least {instances} usable images; an episode with "
                                f"--ways {ways} needs {ways} (add classes, or lower --ways / --instances)"))
    elif spec is None or spec[0] != "all":
        try:  # exactly as training: split every class with images, then drop the small ones
            held = set(choose_test_classes(bank.names, spec, seed=seed, where=str(data.root)))
        except DataError as exc:
            problems.append(Problem("too-few-classes", "", str(exc)))
        else:
            how = test_classes if spec is not None else f"{DEFAULT_TEST_FRACTION} (the default)"
            held_usable = [n for n in usable if n in held]
            split = {"test_classes": str(how), "seed": seed, "train": len(usable) - len(held_usable),
                     "test": len(held_usable), "test_names": sorted(held_usable)}
            if len(held_usable) < ways:
                problems.append(Problem(
                    "too-few-classes", "",
                    f"--test-classes {how} holds out {len(held_usable)} of the {len(usable)} usable classes; held-out "
                    f"episodes with --ways {ways} need {ways} (hold out more, lower --ways, or use a --test-root folder)"))
    return {
        "root": str(data.root),
        "use": "train",
        "image_size": image_size,
        "classes": classes,
        "usable_classes": len(usable),
        "images": int(bank.counts.sum()),
        "ways": ways,
        "instances": instances,
        "split": split,
        "problems": [{"kind": p.kind, "path": p.path, "message": p.message} for p in problems],
    }


def _class_rows(data, counts: dict) -> list[dict]:
    rows = []
    for name in data.class_folders:
        s = data.stats.get(name, {})
        rows.append({"name": name, "images": counts.get(name, 0), "size_min": s.get("size_min"),
                     "size_max": s.get("size_max"), "modes": s.get("modes", []), "formats": s.get("formats", [])})
    return rows


def _inspect_for_use(root, use: str, ways: int, instances: int, reader: ImageReader | None, progress: bool) -> dict:
    """``inspect_folder`` for kshot (every class held out, no split) or predict (a support folder)."""
    reader = reader or ImageReader(20, 1, "pad", polarity="auto", ink_frame="auto")
    data = load_folder(root, reader=reader, progress=progress, option="folder")
    bank = data.bank
    counts = dict(zip(bank.names, (int(c) for c in bank.counts)))
    problems: list[Problem] = list(data.problems)
    if use == "kshot":
        problems += too_few_images(bank, instances)
        usable = [n for n, c in counts.items() if c >= instances]
        if len(usable) < ways:
            problems.append(Problem("too-few-classes", "",
                                    f"{len(usable)} class(es) have at least {instances} usable images (--shots + "
                                    f"--queries); a {ways}-way trial needs {ways} (add images, or lower --ways / "
                                    "--shots / --queries)"))
    else:
        usable = [n for n, c in counts.items() if c >= 1]
        if len(usable) < 2:
            problems.append(Problem("too-few-classes", "", f"{len(usable)} class folder(s) with a usable image; "
                                                           "predict needs at least 2 classes to choose between"))
    return {"root": str(data.root), "use": use, "image_size": reader.image_size, "classes": _class_rows(data, counts),
            "usable_classes": len(usable), "images": int(bank.counts.sum()), "ways": ways, "instances": instances,
            "split": None, "problems": [{"kind": p.kind, "path": p.path, "message": p.message} for p in problems]}


def _size(s) -> str:
    return f"{s[0]}x{s[1]}" if s else "-"


def format_report(report: dict) -> str:
    classes = [{**c, "name": printable(c["name"])} for c in report["classes"]]  # a newline in a name: one row still
    width = max([len("class")] + [len(c["name"]) for c in classes])
    use = report.get("use", "train")
    need = {"train": f"at least {report['instances']} (--instances)",
            "kshot": f"at least {report['instances']} (--shots + --queries)", "predict": "at least 1"}[use]
    lines = [f"{report['root']}: {len(classes)} class folder(s), {report['images']} usable image(s), "
             f"{report['usable_classes']} class(es) with {need}; checked for {use}"
             + (f" at {report['image_size']} px" if report.get("image_size") else "")]
    lines.append(f"  {'class':<{width}}  images  {'sizes (w x h)':<21}  modes / formats")
    for c in classes:
        sizes = "-" if not c["size_min"] else (
            _size(c["size_min"]) if c["size_min"] == c["size_max"] else f"{_size(c['size_min'])} .. {_size(c['size_max'])}")
        kinds = " ".join(c["modes"]) + (" / " + " ".join(c["formats"]) if c["formats"] else "")
        lines.append(f"  {c['name']:<{width}}  {c['images']:>6}  {sizes:<21}  {kinds}".rstrip())
    if report["split"]:
        sp = report["split"]
        lines.append(f"class split --test-classes {sp['test_classes']} --seed {sp['seed']}: {sp['train']} training / "
                     f"{sp['test']} held-out classes ({', '.join(sp['test_names'][:12])}{', ...' if sp['test'] > 12 else ''})")
    problems = report["problems"]
    if not problems:
        lines.append({"train": f"no problems: ready for --ways {report['ways']} --instances {report['instances']}",
                      "kshot": f"no problems: ready for kshot --ways {report['ways']} with {report['instances']} "
                               "images a class", "predict": "no problems: ready for predict --support"}[use])
        return "\n".join(lines)
    lines.append(f"{len(problems)} problem(s):")
    kind_width = max(len(p["kind"]) for p in problems)
    for p in problems:
        lines.append(f"  {p['kind']:<{kind_width}}  {printable(p['path'] or '.')}: {printable(p['message'])}")
    fatal = [p for p in problems if p["kind"] == "too-few-classes"]
    doing = {"train": "training", "kshot": "kshot", "predict": "predict"}[use]
    if fatal:
        lines.append(f"{doing} would stop: " + fatal[0]["message"])
    else:
        lines.append(f"{doing} would skip the files and classes above, with a warning for each")
    return "\n".join(lines)


assert set(PROBLEM_KINDS) >= {"too-few-classes", "too-few-images"}
