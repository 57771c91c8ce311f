"""Image-folder datasets: decoding every format/mode, problems skipped with warnings, clear
errors, the cache, the class split, ``inspect``, and a seeded fuzz of corrupted files."""
from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from helpers import tiny_config
from helpers.images import bomb_png, make_image_folder
from fewshot_mann.cli import main as cli
from fewshot_mann.cli.train import main as train_main
from fewshot_mann.errors import DataError, UserError
from fewshot_mann.engine.inspection import inspect_folder
from fewshot_mann.data.class_split import choose_test_classes, load_folder_banks, parse_test_classes
from fewshot_mann.data.folder import load_folder
from fewshot_mann.data.images import BadImage, decode_image


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """6 classes x 15 images (every format/mode variant) plus one of each problem."""
    return make_image_folder(tmp_path_factory.mktemp("messy") / "data", classes=6, per_class=15, with_problems=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("clean") / "data", classes=8, per_class=6, seed=3)


def folder_cfg(root, **data):
    """A tiny folder config; no validation classes unless a test asks (the two-way split tests)."""
    cfg = tiny_config()
    cfg.data.dataset, cfg.data.image_size, cfg.data.channels = "folder", 8, 3
    cfg.data.validation_classes = "none"
    cfg.data.data_root = None if root is None else str(root)
    cfg.episodes.ways, cfg.episodes.instances = 2, 4
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- decoding

def test_every_format_and_mode_decodes_to_the_asked_shape(messy):
    for channels in (1, 3):
        data = load_folder(messy["root"], 8, channels, progress=False, cache=False)
        assert data.bank.images.dtype == np.uint8 and data.bank.images.shape[1:] == (channels, 8, 8)
        assert data.bank.names == sorted(messy["classes"])
    seen_modes = set().union(*(s["modes"] for s in data.stats.values()))
    seen_formats = set().union(*(s["formats"] for s in data.stats.values()))
    assert {"RGB", "RGBA", "P", "L", "LA", "I;16"} <= seen_modes
    assert {"PNG", "JPEG", "BMP", "TIFF", "WEBP"} <= seen_formats
    assert all(s["size_min"][0] >= 24 and s["size_max"][1] <= 80 for s in data.stats.values())


def test_sixteen_bit_is_stretched_and_transparency_is_black():
    twelve_bit = Image.fromarray(np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1)))  # 0..4080 of 65535
    assert twelve_bit.mode == "I;16"
    out, info = decode_image(encode(twelve_bit, "PNG"), 8, 1, "stretch")
    assert info["mode"] == "I;16" and out.min() < 30 and out.max() > 220  # /257 would leave it below 16
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))
    out, _ = decode_image(encode(rgba, "PNG"), 8, 3, "stretch")
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 4, 4].tolist() == [255, 255, 255]
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 0
    out, _ = decode_image(encode(pal, "PNG", transparency=0), 8, 3, "stretch")
    assert out[:, 3, 3].tolist() == [200, 100, 50]


def test_resize_policies_on_a_wide_image():
    wide = Image.new("L", (40, 10), 255)  # 4:1 white bar
    pad, _ = decode_image(encode(wide, "PNG"), 8, 1, "pad")
    crop, _ = decode_image(encode(wide, "PNG"), 8, 1, "crop")
    stretch, _ = decode_image(encode(wide, "PNG"), 8, 1, "stretch")
    assert pad[0, 0].max() == 0 and pad[0, -1].max() == 0 and pad[0, 4].min() == 255  # letterboxed
    assert crop.min() == 255 and stretch.min() == 255
    with pytest.raises(UserError):
        decode_image(encode(wide, "PNG"), 8, 1, "squash")


def test_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    def no_decoding(self, *a, **k):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    t0 = time.perf_counter()
    with pytest.raises(BadImage) as err:
        decode_image(bomb_png(10000, 6000), 8, 1)  # 60 MP: under PIL's own limit, over ours
    assert err.value.kind == "too-large" and "60 megapixels" in str(err.value)
    with pytest.raises(BadImage) as err:
        decode_image(bomb_png(40000, 40000), 8, 1)  # past PIL's hard limit too
    assert err.value.kind == "too-large"
    assert time.perf_counter() - t0 < 1.0


# ----------------------------------------------------------------------------- problems

def test_every_problem_is_found_and_skipped(messy):
    data = load_folder(messy["root"], 8, 3, progress=False, cache=False)
    found = {p.kind: p.path for p in data.problems}
    for kind, path in messy["problems"].items():
        assert kind in found, kind
        assert any(p.path == path for p in data.problems if p.kind == kind), (kind, path)
    dup = [p for p in data.problems if p.kind == "duplicate"]
    assert len(dup) == 2  # both copies of the leaked file
    a, b = messy["classes"][:2]
    counts = dict(zip(data.bank.names, data.bank.counts.tolist()))
    assert counts[a] == 14 and counts[b] == 15  # the leaked original and its copy both go
    assert "empty_class" not in data.bank.names and "empty_class" in data.class_folders


def test_training_loader_warns_naming_each_skipped_file(messy):
    lines = []
    train, test = load_folder_banks(folder_cfg(messy["root"], test_classes="0.5"), progress=False,
                                    report=lines.append)
    text = "\n".join(lines)
    for path in messy["problems"].values():
        assert path in text
    assert all(line.startswith("skipped ") for line in lines)
    assert train.num_classes == 3 and test.num_classes == 3


def test_outside_link_is_not_followed(tmp_path):
    made = make_image_folder(tmp_path / "d", classes=2, per_class=3)
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(secret / "private.png")
    try:
        os.symlink(secret, made["root"] / made["classes"][0] / "more")  # a linked folder
        os.symlink(secret / "private.png", made["root"] / made["classes"][1] / "x.png")  # a linked file
        os.symlink(secret, made["root"] / "linked_class")  # a linked class folder
        os.symlink(made["root"] / made["classes"][0], made["root"] / made["classes"][1] / "inside")  # stays inside
    except OSError:
        pytest.skip("no symlinks on this file system")
    data = load_folder(made["root"], 8, 3, progress=False, cache=False)
    outside = sorted(p.path for p in data.problems if p.kind == "outside-link")
    assert outside == sorted([f"{made['classes'][0]}/more", f"{made['classes'][1]}/x.png", "linked_class"])
    assert "linked_class" not in data.bank.names
    assert data.bank.counts.tolist() == [3, 3]  # the inside link only brings duplicates, skipped


def test_clear_errors_for_what_cannot_be_skipped(tmp_path, clean):
    with pytest.raises(UserError, match="--data-root DIR"):
        load_folder_banks(folder_cfg(None), progress=False)
    with pytest.raises(DataError, match="does not exist"):
        load_folder_banks(folder_cfg(tmp_path / "nope"), progress=False)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (9, 9)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_folder_banks(folder_cfg(tmp_path / "flat"), progress=False)
    cfg = folder_cfg(clean["root"], test_classes="0.3")
    cfg.episodes.ways = 5
    with pytest.raises(DataError, match="--ways 5 needs 5 held-out classes") as err:
        load_folder_banks(cfg, progress=False, report=lambda m: None)
    assert "\n" not in str(err.value)
    cfg = folder_cfg(clean["root"])
    cfg.episodes.instances = 7  # every class has 6
    lines = []
    with pytest.raises(DataError, match=r"at least 7 images each \(--instances\), .* gives 0 \(2 more have fewer than 7"):
        load_folder_banks(cfg, progress=False, report=lines.append)
    assert len(lines) == 8 and all("6 usable image(s); an episode with --instances 7" in l for l in lines)
    for spec in ("0.3", "all", clean["classes"][0]):
        cfg = folder_cfg(clean["root"], test_classes=spec, test_root=str(clean["root"]))
        with pytest.raises(UserError, match="not both"):
            load_folder_banks(cfg, progress=False)
    with pytest.raises(UserError, match="between 0 and 1"):
        load_folder_banks(folder_cfg(clean["root"], test_classes="1.5"), progress=False)
    with pytest.raises(DataError, match="'nope', which is not a usable class"):
        load_folder_banks(folder_cfg(clean["root"], test_classes="nope"), progress=False)


def test_cli_exits_with_one_line_not_a_traceback(tmp_path, capsys, clean):
    code = train_main(["--dataset", "folder", "--data-root", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --data-root") and "Traceback" not in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- cache

def test_cache_is_reused_and_a_changed_folder_is_noticed(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    made = make_image_folder(tmp_path / "d", classes=3, per_class=4, seed=5)
    first = load_folder(made["root"], 8, 3, progress=False)
    again = load_folder(made["root"], 8, 3, progress=False)
    assert not first.from_cache and again.from_cache
    assert np.array_equal(first.bank.images, again.bank.images) and first.bank.names == again.bank.names
    assert [p.path for p in first.problems] == [p.path for p in again.problems]
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    assert not load_folder(made["root"], 8, 1, progress=False).from_cache  # other channels: another cache
    Image.new("RGB", (30, 20), (9, 9, 9)).save(made["root"] / made["classes"][0] / "new.png")
    changed = load_folder(made["root"], 8, 3, progress=False)
    assert not changed.from_cache and changed.bank.counts.tolist() == [5, 4, 4]
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 2  # the stale 8px RGB one was replaced


# ----------------------------------------------------------------------------- split

def test_fraction_split_is_disjoint_seeded_and_stable(clean):
    names = [f"class{i}" for i in range(20)]
    a = choose_test_classes(names, parse_test_classes("0.3"), seed=1)
    assert len(a) == 6 and a == choose_test_classes(names, "0.3", seed=1)
    assert a != choose_test_classes(names, "0.3", seed=2)
    moved = set(a) ^ set(choose_test_classes(names + ["class20"], "0.3", seed=1))
    assert len(moved - {"class20"}) <= 1  # adding a class moves at most one other
    train, test = load_folder_banks(folder_cfg(clean["root"], test_classes="0.25"), progress=False)
    assert not set(train.names) & set(test.names)
    assert sorted(train.names + test.names) == sorted(clean["classes"]) and test.num_classes == 2
    train, test = load_folder_banks(folder_cfg(clean["root"], test_classes=f" {clean['classes'][0]}, {clean['classes'][3]}"),
                                    progress=False)
    assert test.names == sorted([clean["classes"][0], clean["classes"][3]]) and train.num_classes == 6
    train, test = load_folder_banks(folder_cfg(clean["root"], test_classes="all"), progress=False)
    assert train.num_classes == 0 and test.num_classes == 8


def test_two_folders_must_not_share_classes_or_files(tmp_path, clean):
    other = make_image_folder(tmp_path / "held", classes=3, per_class=5, first_class=10, seed=9)
    train, test = load_folder_banks(folder_cfg(clean["root"], test_root=str(other["root"])), progress=False)
    assert train.names == sorted(clean["classes"]) and test.names == sorted(other["classes"])
    leaked = sorted((clean["root"] / clean["classes"][0]).iterdir())[0]
    (other["root"] / other["classes"][0] / ("leak" + leaked.suffix)).write_bytes(leaked.read_bytes())
    lines = []
    train2, test2 = load_folder_banks(folder_cfg(clean["root"], test_root=str(other["root"])), progress=False,
                                      report=lines.append)
    assert any("both --data-root and --test-root" in l for l in lines)
    assert train2.counts.sum() == train.counts.sum() - 1 and test2.counts.sum() == test.counts.sum()
    (other["root"] / clean["classes"][1]).mkdir()
    Image.new("RGB", (9, 9), (5, 6, 7)).save(other["root"] / clean["classes"][1] / "z.png")
    with pytest.raises(DataError, match="in both --data-root and --test-root"):
        load_folder_banks(folder_cfg(clean["root"], test_root=str(other["root"])), progress=False)


# ----------------------------------------------------------------------------- inspect

def test_inspect_reports_classes_and_every_problem(messy, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(["inspect", str(messy["root"]), "--instances", "15", "--json", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 1
    report = json.loads(out.read_text())
    kinds = {p["kind"] for p in report["problems"]}
    assert set(messy["problems"]) | {"too-few-images"} <= kinds
    for path in messy["problems"].values():
        assert path in text
    assert f"{messy['classes'][2]:<11}      15" in text.replace(" " * 2, "  ")
    rows = {c["name"]: c for c in report["classes"]}
    assert rows["empty_class"]["images"] == 0 and rows[messy["classes"][2]]["images"] == 15
    assert "PNG" in rows[messy["classes"][2]]["formats"] and "I;16" in " ".join(text.split())


def test_inspect_clean_folder_and_episode_checks(clean, capsys):
    assert cli.main(["inspect", str(clean["root"]), "--ways", "2", "--instances", "6", "--no-progress"]) == 0
    assert "no problems" in capsys.readouterr().out
    assert cli.main(["inspect", str(clean["root"]), "--ways", "9", "--instances", "6", "--no-progress"]) == 1
    assert "too-few-classes" in capsys.readouterr().out
    assert cli.main(["inspect", str(clean["root"]), "--ways", "3", "--instances", "6", "--no-progress"]) == 1
    assert "holds out 2 of the 8" in capsys.readouterr().out  # the default 0.3 split
    assert cli.main(["inspect", str(clean["root"]) + "-missing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: folder") and "Traceback" not in err


# ----------------------------------------------------------------------------- fuzz

def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    how = rng.integers(5)
    if how == 0:  # truncated
        return data[: int(rng.integers(0, len(data)))]
    if how == 1:  # bit flips anywhere
        b = bytearray(data)
        for i in rng.integers(0, len(b), int(rng.integers(1, 9))):
            b[i] ^= 1 << int(rng.integers(8))
        return bytes(b)
    if how == 2:  # bit flips in the header, where sizes and lengths live
        b = bytearray(data)
        for i in rng.integers(0, min(len(b), 64), int(rng.integers(1, 4))):
            b[i] ^= 1 << int(rng.integers(8))
        return bytes(b)
    if how == 3:  # random bytes with the right magic number
        return data[:8] + rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
    return rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()  # pure noise


def test_fuzz_corrupted_files_never_escape_as_unhandled_errors(tmp_path):
    rng = np.random.default_rng(2024)
    base = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
    seeds = [encode(base, "PNG"), encode(base, "JPEG", quality=80), encode(base, "BMP"), encode(base, "TIFF"),
             encode(base, "WEBP"), encode(base.convert("P"), "PNG"), encode(base.convert("RGBA"), "TIFF"),
             encode(Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 200)), "PNG")]
    exts = ["png", "jpg", "bmp", "tif", "webp", "png", "tiff", "png"]
    root = tmp_path / "fuzz"
    outcomes = {"ok": 0, "bad": 0}
    t0 = time.perf_counter()
    for i in range(300):
        k = int(rng.integers(len(seeds)))
        data = corrupt(seeds[k], rng)
        try:
            image, _ = decode_image(data, 8, 3)
            assert image.shape == (3, 8, 8) and image.dtype == np.uint8
            outcomes["ok"] += 1
        except DataError:  # the project's own error type (BadImage)
            outcomes["bad"] += 1
        cls = root / f"c{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / f"f{i:03d}.{exts[k]}").write_bytes(data)
    assert outcomes["bad"] > 100 and outcomes["ok"] > 5, outcomes
    data = load_folder(root, 8, 3, progress=False, cache=False)  # the whole folder: skips, never raises
    assert int(data.bank.counts.sum()) + sum(p.kind in ("unreadable", "too-large", "duplicate", "duplicate-in-class")
                                             for p in data.problems) >= 300 - 1
    assert time.perf_counter() - t0 < 30


def test_inspect_checks_the_same_split_as_training(messy):
    for seed in (0, 1, 2):
        report = inspect_folder(messy["root"], ways=2, instances=15, image_size=8, channels=3,
                                test_classes="0.5", seed=seed)
        cfg = folder_cfg(messy["root"], test_classes="0.5")
        cfg.episodes.instances, cfg.train.seed = 15, seed
        train, test = load_folder_banks(cfg, progress=False, report=lambda m: None)
        assert report["split"]["test_names"] == test.names
        assert (report["split"]["train"], report["split"]["test"]) == (train.num_classes, test.num_classes)


def test_an_uploaded_folder_decodes_and_is_checked_as_the_folder_on_disk(messy):
    """``decode_uploads`` (the web app's in-memory folder) gives load_folder's bank, digests and problems."""
    from fewshot_mann.data.folder import decode_uploads

    root = messy["root"]
    files = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*"))
             if p.is_file() and not p.is_symlink()]  # a browser never sends a link out of the folder
    disk = load_folder(root, 12, 3, progress=False, cache=False)
    upload = decode_uploads(files + [("../../etc/passwd", b"x"), (".hidden/a.png", b"x")], 12, 3)
    assert upload.bank.names == disk.bank.names
    assert np.array_equal(upload.bank.images, disk.bank.images) and list(upload.digests) == list(disk.digests)
    kinds = {p.kind: p.path for p in upload.problems}
    on_disk = {p.kind: p.path for p in disk.problems if p.kind not in ("outside-link", "empty-class")}
    for kind, path in on_disk.items():
        assert kinds.get(kind) == path, kind
    assert "../../etc/passwd" not in {p.path for p in upload.problems}  # dot segments are never a class
    with pytest.raises(DataError, match="no class sub-folders"):
        decode_uploads([("loose.png", b"x")], 12, 3)
