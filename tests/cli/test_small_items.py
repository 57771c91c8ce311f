"""Issue 31, the smaller items: spreadsheet formulas in predict --csv, newlines in class names,
GIF images, ``--json ''``, kshot's own wording and a kshot row that fails keeping the others."""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from fewshot_mann.cli import main as cli
from fewshot_mann.data import folder
from fewshot_mann.engine import trainer as training
from fewshot_mann.text import csv_cell, printable
from helpers import one_error_line, as_split, patch_banks, synthetic_bank, tiny_config
from helpers.images import make_image_folder

BANKS = (synthetic_bank(classes=10, per_class=12, seed=1), synthetic_bank(classes=6, per_class=12, seed=2))


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    patch_banks(monkeypatch, BANKS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = tiny_config()
    cfg.episodes.ways, cfg.episodes.instances, cfg.data.rotations = 3, 4, False
    cfg.train.episodes, cfg.train.batch_size, cfg.train.eval_every, cfg.train.threads = 4, 2, 0, 1
    out = tmp_path_factory.mktemp("small") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(training, "load_split_banks", as_split(lambda cfg, progress=True: BANKS))
        training.train(cfg, out, progress=False, log=lambda msg: None)
    return out


def test_predict_csv_never_writes_a_cell_a_spreadsheet_would_run(run_dir, tmp_path, capsys):
    support = make_image_folder(tmp_path / "support", classes=3, per_class=4, size_range=(8, 12))
    names = ["=HYPERLINK(1)", "+cmd", "@SUM(1)"]
    for old, new in zip(sorted(support["root"].iterdir()), names):
        old.rename(support["root"] / new)
    query = tmp_path / "q"
    query.mkdir()
    first = next((support["root"] / names[0]).iterdir())
    (query / f"-1+1{first.suffix}").write_bytes(first.read_bytes())
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--checkpoint", str(run_dir / "checkpoint.pt"), "--support", str(support["root"]),
                     "--query", str(query), "--orders", "1", "--csv", str(out), "--threads", "1"]) == 0
    cells = [c for row in csv.reader(io.StringIO(out.read_text())) for c in row]
    assert not [c for c in cells if c[:1] in "=+-@" and not c.lstrip("-").replace(".", "").isdigit()]
    assert {"'" + n for n in names} & set(cells)  # the predicted class, shown as text
    assert any(c.endswith("-1+1" + first.suffix) or c == "'-1+1" + first.suffix for c in cells)
    assert csv_cell("-0.25") == "-0.25" and csv_cell("=1") == "'=1" and csv_cell(0.5) == 0.5


@pytest.mark.parametrize("cell", [" =1+1", "\t=1", "\r+1", "\n-1-1", "\uff1dHYPERLINK(1)", "  @SUM(1)", "\u3000=1"])
def test_csv_cells_that_start_a_formula_after_blanks_or_in_fullwidth_are_text(cell):
    assert csv_cell(cell) == "'" + cell


def test_an_error_quoting_a_name_with_control_characters_is_one_line(capsys):
    assert cli.main(["train", "--encoder", "torchvision:resnet18\n\x1b[31mfake\u202e", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "\x1b" not in err and "\u202e" not in err


def test_a_newline_in_a_class_name_keeps_one_row_per_class(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size_range=(8, 12))
    first = sorted(data["root"].iterdir())[0]
    first.rename(data["root"] / "two\nlines")
    cli.main(["inspect", str(data["root"]), "--ways", "2", "--instances", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert "two\\nlines" in out and not any(line == "lines" or line.startswith("lines ") for line in out.splitlines())
    assert printable("a\nb\x1b[31m") == "a\\nb\\x1b[31m"


def test_gif_images_are_decoded(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    for c in range(2):
        for i in range(3):
            path = tmp_path / "data" / f"c{c}" / f"{i}.gif"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(10 * c + i).integers(0, 256, (9, 9), dtype=np.uint8)).save(path)
    data = folder.load_folder(tmp_path / "data", image_size=8, progress=False)
    assert data.bank.counts.tolist() == [3, 3] and not data.problems


@pytest.mark.parametrize("command", [["evaluate", "--checkpoint", "missing.pt"], ["knn"]])
def test_an_empty_json_path_says_so(command, capsys):
    assert cli.main([*command, "--json", ""]) == 2
    line = one_error_line(capsys)
    assert "empty path" in line and ". is a folder" not in line


def test_kshot_names_its_own_flags_and_a_failing_row_keeps_the_others(run_dir, tmp_path, capsys):
    out = tmp_path / "k.json"
    code = cli.main(["kshot", "--checkpoint", str(run_dir / "checkpoint.pt"), "--ways", "3", "--shots", "1", "15",
                     "--queries", "1", "--episodes", "4", "--json", str(out), "--no-baselines", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--instances" not in err, err
    assert "--shots" in err
    saved = json.loads(out.read_text())
    assert [(r["ways"], r["shots"]) for r in saved["results"]] == [(3, 1)]
    assert saved["not_run"][0]["shots"] == 15
    assert os.path.getsize(out) > 0


def test_a_symlink_loop_is_named_as_a_loop(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=3, size_range=(8, 12))
    cls = sorted(data["root"].iterdir())[0]
    (cls / "a.png").symlink_to(cls / "b.png")
    (cls / "b.png").symlink_to(cls / "a.png")
    problems = {p.path: p for p in folder.load_folder(data["root"], image_size=8, progress=False).problems}
    assert "loop" in problems[f"{cls.name}/a.png"].message and problems[f"{cls.name}/a.png"].kind != "outside-link"


@pytest.mark.parametrize("where", ["--checkpoint", "--data-root", "--json"])
def test_a_file_name_longer_than_the_system_allows_is_one_line(where, tmp_path, capsys):
    long = str(tmp_path / ("a" * 300))
    args = {"--checkpoint": long, "--data-root": str(tmp_path), "--json": str(tmp_path / "e.json"), where: long}
    assert cli.main(["evaluate", *[x for k, v in args.items() for x in (k, v)], "--episodes", "1"]) == 2
    assert "too long" in one_error_line(capsys)


def test_a_fifo_or_a_broken_link_in_a_class_is_named_for_what_it_is(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=2, per_class=3, size_range=(8, 12))
    cls = sorted(data["root"].iterdir())[0]
    os.mkfifo(cls / "pipe.png")
    (cls / "gone.png").symlink_to(cls / "nothing.png")
    problems = {p.path.rpartition("/")[2]: p.message for p in folder.load_folder(data["root"], image_size=8,
                                                                                  progress=False, cache=False).problems}
    assert problems["pipe.png"].startswith("a FIFO") and problems["gone.png"].startswith("a broken link")
