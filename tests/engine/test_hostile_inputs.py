"""Hostile or broken inputs: checkpoints that would run code, damaged or foreign checkpoints
through every entry point that reads one, a fuzzed checkpoint loader, and Omniglot archives and
folders that try to escape their root or blow up in memory."""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate as evaluate_script
import train as train_script
from helpers import as_split, patch_banks, synthetic_bank, tiny_config
from fewshot_mann.engine import checkpoint
from fewshot_mann.data import omniglot
from fewshot_mann.engine import trainer as training
from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from fewshot_mann.errors import CheckpointError, DataError, UserError
from helpers.omniglot import make_fake_omniglot, omniglot_png

PACKAGE = Path(__file__).resolve().parents[2] / "fewshot_mann"
BANKS = (synthetic_bank(classes=10, per_class=12, seed=1), synthetic_bank(classes=6, per_class=12, seed=2))
TINY_FLAGS = ["--image-size", "6", "--controller-size", "16", "--memory-slots", "10", "--memory-width", "5",
              "--read-heads", "3", "--ways", "3", "--instances", "4", "--no-rotations", "--episodes", "4",
              "--batch-size", "2", "--eval-every", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    patch_banks(monkeypatch, BANKS)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """Tiny trained checkpoints of a MANN and of an LSTM."""
    out = tmp_path_factory.mktemp("valid")
    paths = {}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(training, "load_split_banks", as_split(lambda cfg, progress=True: BANKS))
        for name in ("mann", "lstm"):
            cfg = tiny_config(model=name)
            cfg.episodes.ways, cfg.episodes.instances = 3, 4
            cfg.data.rotations = False
            cfg.train.episodes, cfg.train.batch_size, cfg.train.eval_every = 4, 2, 0
            training.train(cfg, out / name, progress=False, log=lambda msg: None)
            paths[name] = out / name / "checkpoint.pt"
    return paths


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: code from the file would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def raw(path) -> dict:
    return torch.load(path, weights_only=True)


def make_bad(kind: str, tmp: Path, valid: dict) -> Path:
    path = tmp / f"{kind}.pt"
    data = valid["mann"].read_bytes()
    rng = np.random.default_rng(0)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupted":  # garbage over the start of the pickled structure
        path.write_bytes(data[:40] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes() + data[340:])
    elif kind == "random":
        path.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "foreign":  # some other project's .pt
        torch.save({"state_dict": {"fc.weight": torch.zeros(3, 3)}, "epoch": 3}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(10), path)
    elif kind == "other-model":  # our format, a MANN's config, an LSTM's weights
        ckpt = raw(valid["mann"])
        ckpt["model"] = raw(valid["lstm"])["model"]
        torch.save(ckpt, path)
    elif kind in ("version-0", "version-3"):
        ckpt = raw(valid["mann"])
        ckpt["version"] = int(kind[-1])
        torch.save(ckpt, path)
    elif kind == "code":
        ckpt = raw(valid["mann"])
        ckpt["model"] = WritesMarker(tmp / "MARKER")
        torch.save(ckpt, path)
    elif kind == "folder":
        path.mkdir()
    else:
        raise ValueError(kind)
    return path


BAD = {
    "empty": "is empty",
    "truncated": "not a valid fewshot-mann checkpoint",
    "corrupted": "not a valid fewshot-mann checkpoint",
    "random": "not a valid fewshot-mann checkpoint",
    "foreign": "not a fewshot-mann checkpoint",
    "tensor": "not a fewshot-mann checkpoint",
    "other-model": "fit",
    "version-0": "format version 0 is older than any",
    "version-3": "format version 3 is newer than",
    "code": "unsafe",
    "folder": "is a folder",
}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("entry", ["evaluate", "train --resume", "train --init-from"])
def test_bad_checkpoint_is_one_line_and_non_zero_exit(entry, kind, valid, tmp_path, capsys):
    bad = make_bad(kind, tmp_path, valid)
    out = tmp_path / "run"
    if entry == "evaluate":
        rc = evaluate_script.main(["--checkpoint", str(bad), "--episodes", "4", "--no-progress"])
    elif entry == "train --resume":
        out.mkdir()
        bad.rename(out / "checkpoint.pt")
        rc = train_script.main([*TINY_FLAGS, "--out", str(out), "--resume"])
    else:
        rc = train_script.main([*TINY_FLAGS, "--out", str(out), "--init-from", str(bad)])
    assert rc == 2
    assert BAD[kind] in error_line(capsys)
    assert not (tmp_path / "MARKER").exists(), "code from the checkpoint ran"


def test_the_code_payload_is_live_so_the_test_above_means_something(valid, tmp_path):
    bad = make_bad("code", tmp_path, valid)
    with pytest.raises(CheckpointError, match="unsafe"):
        load_checkpoint(bad)
    assert not (tmp_path / "MARKER").exists()
    torch.load(bad, weights_only=False)  # what an unsafe loader would do
    assert (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("form", ["legacy-torch", "plain-pickle"])
def test_code_in_other_pickle_forms_never_runs(form, tmp_path):
    payload = {"format": "fewshot-mann", "version": 1, "model": WritesMarker(tmp_path / "MARKER")}
    path = tmp_path / "evil.pt"
    if form == "legacy-torch":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "MARKER").exists()


def test_init_from_a_checkpoint_of_another_model_is_refused(valid, tmp_path, capsys):
    rc = train_script.main([*TINY_FLAGS, "--out", str(tmp_path / "run"), "--init-from", str(valid["lstm"])])
    assert rc == 2
    assert "holds a 'lstm' model but this run trains --model mann" in error_line(capsys)


def test_exported_checkpoint_cannot_be_resumed_but_says_what_to_do(valid, tmp_path, capsys):
    from fewshot_mann.engine.export import export_checkpoint

    out = tmp_path / "run"
    out.mkdir()
    export_checkpoint(valid["mann"], out / "checkpoint.pt")
    assert train_script.main([*TINY_FLAGS, "--out", str(out), "--resume"]) == 2
    assert "--init-from" in error_line(capsys)


def test_no_unsafe_deserialisation_anywhere_in_the_package():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            unsafe = (("torch.load(" in code and "weights_only=True" not in code)
                      or re.search(r"\bpickle\.loads?\(|allow_pickle\s*=\s*True|(?<![.\w])(?:eval|exec)\(", code))
            if unsafe:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------ format versions


def test_versions_are_migrated_or_refused_with_the_reason(valid, tmp_path, monkeypatch):
    ckpt = raw(valid["mann"])
    for version, needle in ((0, "version 0 is older than any this fewshot-mann can migrate"),
                            (3, "version 3 is newer than this fewshot-mann understands (2); upgrade"),
                            ("1", "no format version")):
        torch.save({**ckpt, "version": version}, tmp_path / "c.pt")
        with pytest.raises(CheckpointError, match=re.escape(needle)):
            load_checkpoint(tmp_path / "c.pt")

    # A registered migration brings a version-0 file (here: weights under "weights") up to date.
    def from_0(old):
        new = dict(old)
        new["model"] = new.pop("weights")
        return new

    monkeypatch.setitem(checkpoint.MIGRATIONS, 0, from_0)
    old = {k: v for k, v in ckpt.items() if k != "model"}
    torch.save({**old, "version": 0, "weights": ckpt["model"]}, tmp_path / "v0.pt")
    migrated = load_checkpoint(tmp_path / "v0.pt")
    assert migrated["version"] == checkpoint.VERSION and "weights" not in migrated
    model = load_model_from_checkpoint(migrated)
    assert torch.equal(model.state_dict()["output.weight"], ckpt["model"]["output.weight"])


# ------------------------------------------------------------------ fuzzing


def _corruptions(data: bytes, valid_ckpt: dict, rng: np.random.Generator, count: int):
    """``count`` damaged variants of a valid checkpoint's bytes, of several kinds."""
    kinds = ["truncate", "flip", "random", "zip-junk", "structure"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "truncate":
            yield kind, data[: int(rng.integers(0, len(data)))]
        elif kind == "flip":
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), int(rng.integers(1, 20))):
                buf[pos] ^= 1 << int(rng.integers(0, 8))
            yield kind, bytes(buf)
        elif kind == "random":
            yield kind, rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
        elif kind == "zip-junk":  # a well-formed zip with the wrong things inside
            bio = io.BytesIO()
            with zipfile.ZipFile(bio, "w") as z:
                with zipfile.ZipFile(io.BytesIO(data)) as src:
                    names = src.namelist()
                    for name in names:
                        choice = rng.integers(0, 3)
                        body = src.read(name)
                        if choice == 1:
                            body = rng.integers(0, 256, len(body) or 1, dtype=np.uint8).tobytes()
                        elif choice == 2:
                            body = body[: int(rng.integers(0, len(body) + 1))]
                        z.writestr(name, body)
            yield kind, bio.getvalue()
        else:  # valid serialisation, wrong contents
            ckpt = dict(valid_ckpt)
            key = ["model", "config", "optimizer", "state", "step", "version", "format", "episodes_done"][i % 8]
            junk = [None, 3, "x", [1, 2], {"a": 1}, torch.zeros(2), {1: torch.zeros(2)}, {"w": "x"}, -1, True]
            ckpt[key] = junk[int(rng.integers(0, len(junk)))]
            if key == "config" and rng.random() < 0.5:
                ckpt["config"] = {"model": {"memory_slots": -3}}
            if key == "state" and rng.random() < 0.7:  # one field of the loop state
                field = sorted(valid_ckpt["state"])[int(rng.integers(0, len(valid_ckpt["state"])))]
                ckpt["state"] = {**valid_ckpt["state"], field: junk[int(rng.integers(0, len(junk)))]}
            bio = io.BytesIO()
            torch.save(ckpt, bio)
            yield kind, bio.getvalue()


def _resume_from(path: Path, out: Path):
    """``train.py --resume`` from ``path``, two steps further than the valid checkpoint."""
    out.mkdir(exist_ok=True)
    for name in ("metrics.jsonl", "config.json"):
        (out / name).unlink(missing_ok=True)
    (out / "checkpoint.pt").write_bytes(path.read_bytes())
    cfg = tiny_config()
    cfg.train.episodes = 8
    training.train(cfg, out, resume=True, progress=False, log=lambda msg: None)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # damaged pickles claim odd protocols
def test_checkpoint_loader_survives_fuzzing(valid, tmp_path):
    """Every damaged file either loads (and then serves evaluate, export and resume, or is
    refused by them) or is refused with CheckpointError: never another exception. (Resuming
    may also stop with the one-line non-finite error: a flipped bit in a weight can be NaN.)"""
    from fewshot_mann.engine.export import export_checkpoint

    data = valid["mann"].read_bytes()
    ckpt = raw(valid["mann"])
    rng = np.random.default_rng(2024)
    outcomes = {"loaded": 0, "refused": 0}
    path = tmp_path / "fuzz.pt"
    consumers = {"evaluate": lambda c: load_model_from_checkpoint(c),
                 "export": lambda c: export_checkpoint(path, tmp_path / "exported.pt"),
                 "resume": lambda c: _resume_from(path, tmp_path / "resumed")}
    for kind, blob in _corruptions(data, ckpt, rng, 300):
        path.write_bytes(blob)
        stage = "load"
        try:
            loaded = load_checkpoint(path)
            outcomes["loaded"] += 1
            for stage, use in consumers.items():
                try:
                    use(loaded)
                except CheckpointError:
                    pass
                except UserError as exc:
                    assert stage == "resume" and "non-finite" in str(exc), exc
        except CheckpointError:
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{kind} corruption: {stage} raised {type(exc).__name__}: {exc}")
    assert outcomes["refused"] > 150 and outcomes["loaded"] > 20, outcomes


# ------------------------------------------------------------------ hostile Omniglot sources


def test_zip_members_outside_the_archive_root_are_never_read(tmp_path):
    make_fake_omniglot(tmp_path, as_zip=True)
    with zipfile.ZipFile(tmp_path / "images_background.zip", "a") as z:
        for name in ("/Evil/character01/abs.png", "images_background/../Evil/dotdot.png",
                     "images_background/Evil/../escape.png", "images_background\\..\\Evil\\c\\win.png",
                     "C:/Evil/character01/drive.png"):
            z.writestr(name, omniglot_png(0))
    bank = omniglot.load_omniglot(tmp_path, image_size=8, progress=False)
    assert bank.num_classes == 10 and len(bank.images) == 200
    assert not [n for n in bank.names if ".." in n or "Evil" in n or "\\" in n]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_background.zip", "images_evaluation.zip"]


def test_symlinks_out_of_the_dataset_root_are_not_followed(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    make_fake_omniglot(root, as_zip=False)
    outside = tmp_path / "secret" / "character01"
    outside.mkdir(parents=True)
    for i in range(20):
        (outside / f"s_{i:02d}.png").write_bytes(omniglot_png(0))
    (root / "images_background" / "LinkedAlphabet").symlink_to(tmp_path / "secret", target_is_directory=True)
    linked_char = root / "images_background" / "Alpha0" / "character09"
    linked_char.symlink_to(outside, target_is_directory=True)
    (root / "images_background" / "Alpha0" / "character01" / "link.png").symlink_to(outside / "s_00.png")
    # a link that stays inside the root is an ordinary file
    (root / "images_background" / "Alpha0" / "character02" / "inside.png").symlink_to(
        root / "images_background" / "Alpha0" / "character02" / "01_00.png")
    bank = omniglot.load_omniglot(root, image_size=8, progress=False)
    assert bank.num_classes == 10
    assert not [n for n in bank.names if "Linked" in n or "character09" in n]
    counts = dict(zip(bank.names, bank.counts.tolist()))
    assert counts["background/Alpha0/character01"] == 20 and counts["background/Alpha0/character02"] == 21


def _bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side pixels: tens of kB on disk, side**2 bytes decoded."""
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = _bomb_png(6000)  # 36 million pixels
    assert len(bomb) < 100_000
    with pytest.raises(DataError, match="declares 6000x6000 pixels.*decompression bomb"):
        omniglot.decode_png(bomb, 8, "bomb.png")
    make_fake_omniglot(tmp_path, as_zip=True)
    with zipfile.ZipFile(tmp_path / "images_evaluation.zip", "a") as z:
        z.writestr("images_evaluation/Alpha0/character01/bomb.png", bomb)
    with pytest.raises(DataError, match="bomb.png declares 6000x6000"):
        omniglot.load_omniglot(tmp_path, image_size=8, progress=False)


def test_oversized_member_is_refused_before_reading(tmp_path):
    make_fake_omniglot(tmp_path, as_zip=True)
    with zipfile.ZipFile(tmp_path / "images_evaluation.zip", "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("images_evaluation/Alpha0/character01/huge.png", b"\0" * (omniglot.MAX_PNG_BYTES + 1))
    with pytest.raises(DataError, match="huge.png is 1,048,577 bytes.*refusing to read"):
        omniglot.load_omniglot(tmp_path, image_size=8, progress=False)
