"""Hostile and careless use (issue 21): one test (or more) per root cause, each failing if the
fix at the root is taken away. Tiny synthetic data; seconds in all."""
from __future__ import annotations

import errno
import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import evaluate as evaluate_script
import train as train_script
from helpers import SYNTHETIC_BANKS, TINY_TRAIN, fails_if_blocked, one_error_line, as_split, patch_banks, tiny_config
from fewshot_mann.engine import checkpoint
from fewshot_mann.cli import main as cli
from fewshot_mann import fileio
from fewshot_mann.data import folder, images, scan
from fewshot_mann.engine import trainer as training
from fewshot_mann.engine.checkpoint import load_checkpoint
from fewshot_mann.config import Config
from fewshot_mann.errors import CheckpointError, DataError, UserError
from helpers.images import make_image_folder

BANKS = SYNTHETIC_BANKS
TINY = TINY_TRAIN


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    patch_banks(monkeypatch, BANKS)


def code_of(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def small_cfg() -> Config:
    cfg = tiny_config()
    cfg.episodes.ways, cfg.episodes.instances = 3, 4
    cfg.data.rotations = False
    cfg.train.episodes, cfg.train.batch_size, cfg.train.eval_every, cfg.train.threads = 8, 4, 0, 1
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(training, "load_split_banks", as_split(lambda cfg, progress=True: BANKS))
        training.train(small_cfg(), out, progress=False, log=lambda msg: None)
    return out


def edited_checkpoint(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def nan_checkpoint(run_dir, tmp_path) -> Path:
    def poison(ckpt):
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    return edited_checkpoint(run_dir / "checkpoint.pt", tmp_path / "nan.pt", poison)


# ------------------------------------------------- 1. shared flags and config types (causes 3, 4)

COMMANDS = {  # a command line each command would otherwise start working on
    "train": ["train", *TINY[:-2], "--out", "OUT"],
    "evaluate": ["evaluate", "--checkpoint", "missing.pt"],
    "predict": ["predict", "--checkpoint", "missing.pt", "--support", "s", "--query", "q"],
    "kshot": ["kshot", "--checkpoint", "missing.pt"],
    "knn": ["knn"],
    "bench": ["bench", "--no-reference", "--seconds", "0.1"],
    "inspect": ["inspect", "missing_folder"],
}
SHARED_BAD = [(["--device", "mps"], "--device must be auto, cpu, cuda"),
              (["--device", "meta"], "--device must be auto, cpu, cuda"),
              (["--device", "bogus"], "--device must be auto, cpu, cuda"),
              (["--seed", "-1"], "--seed must be in [0, 2**63)"),
              (["--threads", "100000"], "--threads must be in [0, 1024]")]


# inspect has no --device or --threads, bench no --device (it measures the CPU)
SHARED_CASES = [(command, bad, needle) for command in sorted(COMMANDS) for bad, needle in SHARED_BAD
                if not (command == "inspect" and bad[0] != "--seed" or command == "bench" and bad[0] == "--device")]


@pytest.mark.parametrize("command,bad,needle", SHARED_CASES, ids=[f"{c} {' '.join(b)}" for c, b, _ in SHARED_CASES])
def test_shared_flags_are_checked_by_every_command(command, bad, needle, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "run")) for a in COMMANDS[command]]
    assert code_of(cli.main, [*argv, *bad]) == 2
    assert needle in one_error_line(capsys)  # the flag, not the missing checkpoint or folder: checked first


def test_inspect_image_size_has_an_upper_bound(capsys):
    assert code_of(cli.main, ["inspect", "missing_folder", "--image-size", "100000"]) == 2
    assert "--image-size must be at most 1024" in one_error_line(capsys)


CONFIG_BAD = [({"rotations": "false"}, "data.rotations must be true or false"),
              ({"key_strength": "false"}, "model.key_strength must be true or false"),
              ({"ways": 3.5}, "episodes.ways must be an integer"),
              ({"seed": 1.5}, "train.seed must be an integer"),
              ({"seed": True}, "train.seed must be an integer"),
              ({"data_root": 5}, "data.data_root must be a string"),
              ({"device": 7}, "train.device must be a string"),
              ({"model": {"memory_slots": "128"}}, "model.memory_slots must be an integer"),
              ({"lr": [0.1]}, "train.lr must be a number")]


@pytest.mark.parametrize("values,needle", CONFIG_BAD, ids=[json.dumps(v) for v, _ in CONFIG_BAD])
def test_config_file_values_are_type_checked(values, needle, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    assert code_of(train_script.main, ["-c", str(path), *TINY, "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert needle in line and str(path) in line
    assert not (tmp_path / "run").exists()


WRONG_VALUES = ["text", 1.5, True, [1], {"a": 1}, None, -1, 10**30]


def test_fuzzed_types_in_every_config_field_are_user_errors():
    """Every field of every section, every wrong type: a valid Config or a UserError."""
    base = Config().to_dict()
    outcomes = {"ok": 0, "refused": 0}
    for section, fields in base.items():
        for name in fields:
            for value in WRONG_VALUES + [torch.zeros(2)]:
                d = json.loads(json.dumps(base))
                d[section][name] = value
                try:
                    Config.from_dict(d)
                    outcomes["ok"] += 1
                except UserError:
                    outcomes["refused"] += 1
    assert outcomes["refused"] > 5 * len([n for s in base.values() for n in s])
    for value in WRONG_VALUES[:-3] + [torch.zeros(3)]:  # a whole section of the wrong type
        with pytest.raises(UserError):
            Config.from_dict({**base, "model": value})


def test_fuzzed_types_in_a_checkpoint_config_load_or_are_refused(run_dir, tmp_path):
    """Every config field of a real checkpoint set to each wrong type: load_checkpoint refuses it
    with CheckpointError, or it loads and its model builds; never another exception."""
    src = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    refused = 0
    for section, fields in src["config"].items():
        for name in fields:
            for value in ["text", 2.5, True, [3], None, torch.ones(2)]:
                ckpt = {**src, "config": {s: dict(f) for s, f in src["config"].items()}}
                ckpt["config"][section][name] = value
                path = tmp_path / "fuzz.pt"
                torch.save(ckpt, path)
                try:
                    loaded = load_checkpoint(path)
                except CheckpointError:
                    refused += 1
                    continue
                try:
                    checkpoint.load_model_from_checkpoint(loaded)
                except CheckpointError:
                    pass
    assert refused > 4 * sum(len(f) for f in src["config"].values())


CHECKPOINT_TYPE_EDITS = {
    "float for an int": lambda c: c["config"]["episodes"].__setitem__("ways", 3.0),
    "int for a path": lambda c: c["config"]["data"].__setitem__("data_root", 5),
    "string for a bool": lambda c: c["config"]["model"].__setitem__("key_strength", "no"),
    "tensor for a section": lambda c: c["config"].__setitem__("model", torch.zeros(3)),
    "list for the command": lambda c: c.__setitem__("command", [["train.py"]]),
    "string for the origin": lambda c: c.__setitem__("init_from", "elsewhere"),
    "last_eval of the wrong type": lambda c: c["state"].__setitem__("last_eval", {"episodes": "x"}),
    "last_eval accuracy not numbers": lambda c: c["state"].__setitem__(
        "last_eval", {"episodes": 4, "accuracy_by_instance": "high"}),
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_TYPE_EDITS))
def test_checkpoint_fields_of_the_wrong_type_are_one_line(kind, run_dir, tmp_path, capsys):
    bad = edited_checkpoint(run_dir / "checkpoint.pt", tmp_path / "bad.pt", CHECKPOINT_TYPE_EDITS[kind])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint.pt").write_bytes(bad.read_bytes())
    entry_points = [
        (evaluate_script.main, ["--checkpoint", str(bad), "--episodes", "2", "--no-progress", "--threads", "1"]),
        (train_script.main, [*TINY, "--episodes", "12", "--out", str(resumed), "--resume"]),
        (train_script.main, [*TINY, "--out", str(tmp_path / "init"), "--init-from", str(bad)]),
    ]
    for main, argv in entry_points:
        code = code_of(main, argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        if kind.startswith("last_eval") and "--resume" not in argv:
            assert code == 0, err  # the loop state matters to a resume only
        else:
            assert code == 2 and err.count("error: ") == 1, (argv, err)


# ------------------------------------------------------------------- 2. outputs (cause 2)

def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    """The checkpoint does not exist: the output's error comes first, so it was checked first."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    cases = [(["--json", str(tmp_path / "a_folder")], "is a folder"),
             (["--json", str(tmp_path / "a_file" / "e.json")], "Not a directory"),
             (["--json", str(tmp_path / "fifo")], "FIFO"),
             (["--json", "/dev/null"], "device node"),
             (["--json", "/proc/self/nope.json"], "cannot write in /proc/self"),
             (["--plot", str(tmp_path / "p.xyz")], "must end in .png or .pdf or .svg")]
    for argv, needle in cases:
        assert code_of(evaluate_script.main, ["--checkpoint", str(tmp_path / "missing.pt"), *argv]) == 2
        line = one_error_line(capsys)
        assert needle in line and "missing.pt" not in line, line
    assert stat_is_fifo(tmp_path / "fifo")


def stat_is_fifo(path) -> bool:
    import stat
    return stat.S_ISFIFO(os.lstat(path).st_mode)


def test_full_disk_is_one_line_naming_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    fileio.atomic_write_json(path, {"v": 1})
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(fileio.OutputError, match=f"cannot write {path}: No space left on device") as info:
        fileio.atomic_write_json(path, {"v": 2, "pad": "x" * 3_000_000})
    assert isinstance(info.value, UserError) and info.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "write", real_write)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_full_disk_during_evaluate_is_one_line(run_dir, tmp_path, monkeypatch, capsys):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    out = tmp_path / "e.json"
    assert evaluate_script.main(["--checkpoint", str(run_dir / "checkpoint.pt"), "--episodes", "2",
                                 "--json", str(out), "--no-progress", "--threads", "1"]) == 2
    assert f"cannot write {out}: No space left on device" in one_error_line(capsys)


def test_fifo_and_device_targets_are_refused_and_symlinks_written_through(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(fileio.OutputError, match="FIFO"):
        fileio.atomic_write_text(tmp_path / "fifo", "x")  # never opened (would block), never replaced
    assert stat_is_fifo(tmp_path / "fifo")
    with pytest.raises(fileio.OutputError, match="device node"):
        fileio.atomic_write_text("/dev/null", "x")
    assert Path("/dev/null").is_char_device()
    real = tmp_path / "real.json"
    real.write_text("old")
    (tmp_path / "link.json").symlink_to(real)
    fileio.atomic_write_json(tmp_path / "link.json", {"new": True})
    assert (tmp_path / "link.json").is_symlink() and json.loads(real.read_text()) == {"new": True}


def test_read_only_places_fail_before_the_work(run_dir, tmp_path, monkeypatch, capsys):
    """As root, permissions do not stop a write: the read-only folder is simulated at the
    system call (EROFS from creating any file in it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(ro)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    assert code_of(evaluate_script.main, ["--checkpoint", str(tmp_path / "missing.pt"),
                                          "--json", str(ro / "e.json")]) == 2
    assert "Read-only file system" in one_error_line(capsys)
    started = []
    monkeypatch.setattr(training, "load_split_banks", as_split(lambda *a, **k: started.append(1) or BANKS))
    assert train_script.main([*TINY, "--out", str(ro / "run")]) == 2
    assert "Read-only file system" in one_error_line(capsys) and not started


def test_nan_is_written_as_null_never_as_bare_nan(tmp_path):
    fileio.atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")]})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == {"a": None, "b": [1.0, None]}


# ------------------------------------------------------------------- 3. inputs bounded (cause 3)

def test_single_file_inputs_are_regular_and_bounded(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo")
    with fails_if_blocked("a read blocked or never ended"):
        for source in ("/dev/zero", str(tmp_path / "fifo")):
            assert code_of(train_script.main, ["-c", source, *TINY, "--out", str(tmp_path / "run")]) == 2
            assert "not a regular file" in one_error_line(capsys)
            with pytest.raises(folder.BadImage, match="not a regular file"):
                images.read_image_file(Path(source), 6, 1, "pad")
        big = tmp_path / "big.json"
        big.write_bytes(b" " * (fileio.MAX_JSON_BYTES + 1))
        assert code_of(train_script.main, ["-c", str(big), *TINY, "--out", str(tmp_path / "run")]) == 2
        assert "over the" in one_error_line(capsys)


def test_deeply_nested_config_json_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert code_of(train_script.main, ["-c", str(path), *TINY, "--out", str(tmp_path / "run")]) == 2
    assert "nested more than 64 levels" in one_error_line(capsys)
    assert fileio.json_depth('{"a": "[[[[", "b": [[1]]}', 10) == 3  # brackets inside strings do not count


def test_class_folder_nested_1100_levels_is_reported_not_a_recursion_error(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root, classes=3, per_class=2, size_range=(8, 8))
    deep = root / "deep_class"
    path = deep
    deep.mkdir()
    for _ in range(1100):  # one level at a time (Path.mkdir(parents=True) itself recurses)
        path = path / "d"
        os.mkdir(path)
    Image.new("L", (8, 8), 7).save(path / "img.png")
    try:
        base, classes, problems = scan.scan_folder(root)
        assert "deep_class" not in classes
        assert any(p.kind == "too-deep" for p in problems)
        assert any(p.kind == "empty-class" and p.path == "deep_class/" for p in problems)
    finally:  # bottom up, one level at a time: pytest's own clean-up (shutil.rmtree) recurses
        (path / "img.png").unlink()
        while path != root:
            os.rmdir(path)
            path = path.parent


def test_checkpoint_that_expands_when_walked_is_refused_quickly(run_dir, tmp_path, capsys):
    def laughs(ckpt):
        lol = ["lol"]
        for _ in range(12):  # 8**12 (7e10) strings when walked, 12 levels deep; tiny on disk
            lol = [lol] * 8
        ckpt["command"] = lol
    bad = edited_checkpoint(run_dir / "checkpoint.pt", tmp_path / "laughs.pt", laughs)
    assert bad.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match="nested values"):
        load_checkpoint(bad)
    assert evaluate_script.main(["--checkpoint", str(bad), "--no-progress"]) == 2
    assert "a structure that expands when read" in one_error_line(capsys)
    assert checkpoint.structure_problem(torch.load(run_dir / "checkpoint.pt", weights_only=True)) is None


def test_a_checkpoint_that_is_a_device_is_never_opened(capsys):
    assert evaluate_script.main(["--checkpoint", "/dev/zero", "--no-progress"]) == 2
    assert "is not a regular file" in one_error_line(capsys)


# --------------------------------------------------------- 4. runs never destroy their work (cause 1)

def test_overwrite_never_deletes_the_source_of_init_from(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    before = (run / "checkpoint.pt").read_bytes()
    assert train_script.main([*TINY, "--out", str(run), "--overwrite", "--init-from", str(run / "checkpoint.pt")]) == 2
    assert "is this run's own checkpoint.pt" in one_error_line(capsys)
    assert (run / "checkpoint.pt").read_bytes() == before and (run / "metrics.jsonl").exists()
    (tmp_path / "alias.pt").symlink_to(run / "checkpoint.pt")  # the same file under another name
    assert train_script.main([*TINY, "--out", str(run), "--overwrite", "--init-from", str(tmp_path / "alias.pt")]) == 2
    assert "is this run's own checkpoint.pt" in one_error_line(capsys)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_bad_init_from_fails_before_overwrite_deletes_anything(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    assert train_script.main([*TINY, "--out", str(run), "--overwrite", "--init-from", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert (run / "checkpoint.pt").exists()


def test_export_onto_its_own_source_is_refused(run_dir, tmp_path, capsys):
    src = tmp_path / "checkpoint.pt"
    src.write_bytes((run_dir / "checkpoint.pt").read_bytes())
    before = src.read_bytes()
    os.symlink(src, tmp_path / "sym.pt")
    os.link(src, tmp_path / "hard.pt")
    for dst in (src, tmp_path / "sym.pt", tmp_path / "hard.pt", tmp_path / "." / "checkpoint.pt"):
        assert cli.main(["export", str(src), str(dst)]) == 2
        assert "the output is the checkpoint itself" in one_error_line(capsys)
    assert src.read_bytes() == before
    assert cli.main(["export", str(src), str(tmp_path / "small.pt")]) == 0


def test_a_second_training_into_a_locked_run_folder_gets_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = fileio.RunLock()
    holder.acquire(out)  # another training holds the folder (a flock conflicts across open files)
    try:
        assert train_script.main([*TINY, "--out", str(out)]) == 2
        assert f"--out {out} is in use by another training (pid {os.getpid()})" in one_error_line(capsys)
        assert not (out / "checkpoint.pt").exists() and not (out / "config.json").exists()
    finally:
        holder.release()
    assert train_script.main([*TINY, "--out", str(out)]) == 0  # released: the folder is free again
    capsys.readouterr()
    assert train_script.main([*TINY, "--out", str(out), "--resume", "--episodes", "12"]) == 0  # the lock is not a run


# ----------------------------------------------------------------- 5. non-finite models (cause 6)

def test_nan_weights_are_refused_by_predict_and_init_from_and_flagged_by_evaluate(run_dir, tmp_path, capsys):
    bad = nan_checkpoint(run_dir, tmp_path)
    support = make_image_folder(tmp_path / "support", classes=3, per_class=4, size_range=(8, 12))
    assert cli.main(["predict", "--checkpoint", str(bad), "--support", str(support["root"]),
                     "--query", str(support["root"]), "--json", str(tmp_path / "p.json"), "--threads", "1"]) == 2
    assert "non-finite weights" in one_error_line(capsys)
    assert not (tmp_path / "p.json").exists()
    assert train_script.main([*TINY, "--out", str(tmp_path / "init"), "--init-from", str(bad)]) == 2
    assert "non-finite weights" in one_error_line(capsys)
    out = tmp_path / "e.json"
    assert evaluate_script.main(["--checkpoint", str(bad), "--episodes", "4", "--json", str(out),
                                 "--no-progress", "--threads", "1"]) == 0
    assert "warning: checkpoint" in capsys.readouterr().err
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert "non-finite" in result["warning"]


def test_resume_from_a_nan_checkpoint_is_refused(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    nan_checkpoint(run_dir, tmp_path).rename(run / "checkpoint.pt")
    assert train_script.main([*TINY, "--episodes", "12", "--out", str(run), "--resume"]) == 2
    assert "non-finite weights" in one_error_line(capsys)


def test_non_finite_stop_names_a_checkpoint_only_when_there_is_one(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "loss_fn", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError) as info:
        training.train(small_cfg(), tmp_path / "run", progress=False, log=lambda m: None)
    assert "no checkpoint was written yet" in str(info.value) and "kept at" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------- 6. caches (cause 5)

def _bmp_folder(root: Path, values: dict[str, int]) -> None:
    for name, value in values.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.new("L", (8, 8), value + i).save(root / name / f"img{i}.bmp")


def test_the_decode_cache_keys_on_content_not_times(tmp_path):
    root = tmp_path / "bmp"
    _bmp_folder(root, {"a": 10, "b": 200})
    first = folder.load_folder(root, 8, 1, progress=False)
    times = {p: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in root.rglob("*.bmp")}
    _bmp_folder(root, {"a": 60, "b": 120})  # same sizes, new pixels...
    for p, (a, m) in times.items():
        os.utime(p, ns=(a, m))  # ...and the same times
    second = folder.load_folder(root, 8, 1, progress=False)
    assert not second.from_cache and int(second.bank.images[0].max()) == 60 != int(first.bank.images[0].max())
    os.rename(root / "a" / "img0.bmp", tmp_path / "swap.bmp")  # swap two files between classes with mv
    os.rename(root / "b" / "img0.bmp", root / "a" / "img0.bmp")
    os.rename(tmp_path / "swap.bmp", root / "b" / "img0.bmp")
    third = folder.load_folder(root, 8, 1, progress=False)
    a = third.bank.images[third.bank.offsets[0]:third.bank.offsets[0] + 2]
    assert not third.from_cache and sorted(int(x.max()) for x in a) == [61, 120]
    assert folder.load_folder(root, 8, 1, progress=False).from_cache  # unchanged: served from the cache


def test_a_transient_decode_failure_is_never_cached(tmp_path, monkeypatch):
    root = tmp_path / "bmp"
    _bmp_folder(root, {"a": 10, "b": 200})
    real_open, calls = Image.open, []

    def out_of_memory_once(*args, **kwargs):  # inside the decoder, on the first file only
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError
        return real_open(*args, **kwargs)
    monkeypatch.setattr(Image, "open", out_of_memory_once)
    first = folder.load_folder(root, 8, 1, progress=False)
    monkeypatch.undo()
    assert [p.kind for p in first.problems] == ["unreadable"] and "out of memory" in first.problems[0].message
    second = folder.load_folder(root, 8, 1, progress=False)
    assert not second.from_cache and not second.problems and second.bank.images.shape[0] == 4


def test_the_omniglot_cache_keys_on_the_archive_content(tmp_path, monkeypatch):
    from fewshot_mann.data import omniglot

    monkeypatch.setattr(omniglot, "cache_dir", lambda: tmp_path / "cache")

    def archive(part: str, value: int) -> Path:
        png, path = tmp_path / "x.png", tmp_path / f"images_{part}.zip"
        Image.new("L", (105, 105), value).save(png, compress_level=0)  # size independent of the pixels
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            z.write(png, f"images_{part}/Alphabet/character01/0101_01.png")
        os.utime(path, ns=(10**18, 10**18))
        return path

    archive("evaluation", 0)
    first_zip = archive("background", 255)
    first = omniglot.load_omniglot(tmp_path, 20, progress=False)
    size = first_zip.stat().st_size
    assert archive("background", 0).stat().st_size == size  # same size, same time: only the content differs
    second = omniglot.load_omniglot(tmp_path, 20, progress=False)
    assert int(first.images[0].max()) == 0 and int(second.images[0].max()) == 255  # strokes are inverted


# ------------------------------------------------------------------ 7. messages (cause 7)

def test_resume_names_each_ignored_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main([*TINY, "--episodes", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert train_script.main([*TINY, "--episodes", "8", "--out", str(out), "--resume",
                              "--model", "lstm", "--lr", "0.01"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "ignored:" in line]
    assert len(warning) == 1, err
    assert "--model lstm (the run has mann)" in warning[0] and "--lr 0.01 (the run has 0.002)" in warning[0]
    assert "--episodes" not in warning[0] and "--ways" not in warning[0]  # taken, or the same as the run's


def test_resume_without_episodes_keeps_the_runs_own_budget(tmp_path, capsys):
    """--resume alone keeps the run's own --episodes (not the default's 240,000); --episodes extends it."""
    import torch

    out = tmp_path / "run"
    assert train_script.main([*TINY, "--episodes", "4", "--out", str(out)]) == 0
    assert train_script.main(["--out", str(out), "--resume", "--episodes", "8", "--no-progress"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["episodes_done"] == 8 and ckpt["config"]["train"]["episodes"] == 8  # extended
    assert train_script.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["episodes_done"] == 8 and ckpt["config"]["train"]["episodes"] == 8  # nothing more to do


def test_a_class_folder_linking_to_another_is_named_as_such(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root, classes=3, per_class=3, size_range=(8, 12))
    real = sorted(p.name for p in root.iterdir())[-1]
    (root / "0_alias").symlink_to(root / real, target_is_directory=True)  # sorts before the real one
    _, classes, problems = scan.scan_folder(root)
    assert real in classes and "0_alias" not in classes
    kinds = {p.path: (p.kind, p.message) for p in problems}
    assert kinds["0_alias/"][0] == "linked-class" and f"{real}/" in kinds["0_alias/"][1]
    assert not any(p.kind == "empty-class" for p in problems)


def test_allocation_error_building_a_checkpoint_model_keeps_digits_and_names_no_flag(run_dir, monkeypatch, capsys):
    import fewshot_mann.models.registry as models

    def huge(cfg):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "123456789012345678901234567890 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(models, "build_model", huge)
    assert evaluate_script.main(["--checkpoint", str(run_dir / "checkpoint.pt"), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "123456789012345678901234567890 bytes" in line and "--batch-size" not in line


def test_a_checkpoint_config_asking_for_a_huge_model_is_refused_before_allocating(run_dir, tmp_path, capsys):
    bad = edited_checkpoint(run_dir / "checkpoint.pt", tmp_path / "huge.pt",
                            lambda c: c["config"]["model"].__setitem__("controller_size", 5_000))
    assert evaluate_script.main(["--checkpoint", str(bad), "--no-progress"]) == 2  # 1e8 weights: never built
    assert "do not fit" in one_error_line(capsys)


# --------------------------------------------------------------- 8. smaller tracebacks (cause 8)

def test_predict_csv_with_a_class_name_that_is_not_utf8(run_dir, tmp_path, capsys):
    support = make_image_folder(tmp_path / "support", classes=3, per_class=4, size_range=(8, 12))
    first = sorted(support["root"].iterdir())[0]
    odd = os.fsencode(support["root"]) + b"/caf\xe9"
    os.rename(os.fsencode(first), odd)
    out_csv = tmp_path / "p.csv"
    code = cli.main(["predict", "--checkpoint", str(run_dir / "checkpoint.pt"), "--support", str(support["root"]),
                     "--query", str(support["root"]), "--orders", "1", "--json", str(tmp_path / "p.json"),
                     "--csv", str(out_csv), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    assert b"p(caf\xe9)" in out_csv.read_bytes()  # the folder's own bytes, as it is named on disk
    json.loads((tmp_path / "p.json").read_text())


def _zip_with(tmp_path, name: str, tweak) -> Path:
    path = tmp_path / f"{name}.zip"
    png = tmp_path / "x.png"
    Image.new("L", (105, 105), 255).save(png)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(png, f"{name}/Alphabet/character01/0101_01.png")
    data = bytearray(path.read_bytes())
    tweak(data)
    path.write_bytes(bytes(data))
    return path


def _flip_payload(data: bytearray) -> None:  # the compressed bytes: a bad CRC or a zlib error
    data[60] ^= 0xFF


def _set_encrypted(data: bytearray) -> None:  # general-purpose flag bit 0, local and central headers
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.find(sig)
        offset = at + (6 if sig == b"PK\x03\x04" else 8)
        data[offset] |= 1


def _unsupported_method(data: bytearray) -> None:  # compression method 99 (AES) in both headers
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.find(sig)
        offset = at + (8 if sig == b"PK\x03\x04" else 10)
        data[offset:offset + 2] = struct.pack("<H", 99)


@pytest.mark.parametrize("tweak", [_flip_payload, _set_encrypted, _unsupported_method],
                         ids=["bad-crc", "encrypted", "unsupported-compression"])
def test_damaged_omniglot_zip_members_are_one_line(tweak, tmp_path, monkeypatch):
    from fewshot_mann.data import omniglot

    monkeypatch.setattr(omniglot, "cache_dir", lambda: tmp_path / "cache")
    _zip_with(tmp_path, "images_background", tweak)
    _zip_with(tmp_path, "images_evaluation", lambda d: None)
    with pytest.raises(DataError, match="cannot be read"):
        omniglot.load_omniglot(tmp_path, 20, progress=False)
