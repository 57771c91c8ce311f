"""The web app's server without a browser (Starlette's TestClient): the token on every request,
upload limits, one-line errors with the server still answering, and the answers equal to
``predict``'s for the same inputs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the app extra is not installed (pip install '.[app]')")
pytest.importorskip("python_multipart", reason="the app extra is not installed (pip install '.[app]')")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (pip install '.[test]')")

from starlette.testclient import TestClient  # noqa: E402

from helpers.app import flat_cases, tiny_backbone_checkpoint, tiny_checkpoint  # noqa: E402
from helpers.images import make_image_folder  # noqa: E402
from fewshot_mann.app.server import Limits, create_app  # noqa: E402
from fewshot_mann.app.session import Session, nearest_support  # noqa: E402
from fewshot_mann.cli import main as cli  # noqa: E402

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    return {"ckpt": tiny_checkpoint(base / "tiny.pt"),
            "support": make_image_folder(base / "support", classes=3, per_class=4, seed=21)["root"],
            "cases": flat_cases(make_image_folder(base / "cases", classes=3, per_class=2, seed=22)["root"], base / "flat")}


def client_for(folders, limits: Limits | None = None) -> TestClient:
    session = Session([str(folders["ckpt"])])
    session.choose_model(str(folders["ckpt"]))
    return TestClient(create_app(session, TOKEN, limits or Limits()))


def support_files(root: Path):
    return [("files", (p.relative_to(root).as_posix(), p.read_bytes())) for p in sorted(root.rglob("*")) if p.is_file()]


def case_files(root: Path):
    return [("files", (p.name, p.read_bytes())) for p in sorted(root.iterdir()) if p.is_file()]


def test_every_request_needs_the_token(folders):
    client = client_for(folders)
    for path in ("/", "/app.js", "/charts.js", "/app.css", "/api/state", "/api/job", "/api/answers.csv"):
        assert client.get(path).status_code == 403, path
        assert client.get(path + "?token=wrong").status_code == 403, path
        assert client.get(path + "?token=" + TOKEN[:-1]).status_code == 403, path
    assert client.post("/api/model", json={"name": str(folders["ckpt"])}).status_code == 403
    assert client.post("/api/support", files=support_files(folders["support"])).status_code == 403
    page = client.get("/?token=" + TOKEN)
    assert page.status_code == 200 and f"app.js?token={TOKEN}" in page.text and f"charts.js?token={TOKEN}" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"


def test_the_page_loads_only_the_models_it_offers(folders):
    client = client_for(folders)
    r = client.post(f"/api/model?token={TOKEN}", json={"name": "/etc/passwd"})
    assert r.status_code == 400 and "unknown model '/etc/passwd'" in r.json()["error"]
    r = client.post(f"/api/model?token={TOKEN}", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "the request body is not valid JSON"


def test_uploads_are_bounded(folders):
    client = client_for(folders, Limits(file_bytes=2000, request_bytes=10**6, files=5))
    big = [("files", ("a/big.png", b"\x89PNG" + b"0" * 3000))]
    r = client.post(f"/api/support?token={TOKEN}", files=big)
    assert r.status_code == 413 and r.json()["error"] == "a/big.png is over the 0 MB limit per file; not read"
    many = [("files", (f"a/{i}.png", b"x")) for i in range(6)]
    r = client.post(f"/api/support?token={TOKEN}", files=many)
    assert r.status_code == 413 and "more than 5 files" in r.json()["error"]
    client_small = client_for(folders, Limits(request_bytes=1000))
    r = client_small.post(f"/api/support?token={TOKEN}", files=[("files", ("a/x.png", b"0" * 5000))])
    assert r.status_code == 413 and "over the" in r.json()["error"]
    assert client_small.get(f"/api/state?token={TOKEN}").status_code == 200  # still serving


def test_bad_images_are_one_line_and_the_server_keeps_running(folders):
    client = client_for(folders)
    r = client.post(f"/api/cases?token={TOKEN}", files=case_files(folders["cases"]))
    assert r.status_code == 400 and r.json()["error"] == "give the support folder first"
    broken = [("files", ("a/1.png", b"not an image")), ("files", ("b/1.png", b"\x89PNG\r\n\x1a\n broken"))]
    r = client.post(f"/api/support?token={TOKEN}", files=broken)
    assert r.status_code == 400 and "\n" not in r.json()["error"] and "0 usable class" in r.json()["error"]
    assert client.post(f"/api/support?token={TOKEN}", files=support_files(folders["support"])).status_code == 200
    r = client.post(f"/api/cases?token={TOKEN}", files=[("files", ("x.png", b"garbage"))])
    assert r.status_code == 400 and r.json()["error"].startswith("no readable case images (skipped case x.png: ")
    assert "\n" not in r.json()["error"]
    r = client.post(f"/api/cases?token={TOKEN}", files=case_files(folders["cases"]) + [("files", ("y.png", b"junk"))])
    assert r.status_code == 200 and len(r.json()["cases"]) == 6
    assert any(w.startswith("skipped case y.png: ") for w in r.json()["warnings"])


def test_answers_and_downloads_equal_predicts(folders, tmp_path, monkeypatch, capsys):
    client = client_for(folders)
    view = client.post(f"/api/support?token={TOKEN}", files=support_files(folders["support"])).json()
    assert [len(c["images"]) for c in view["classes"]] == [4, 4, 4]
    assert view["classes"][0]["images"][0]["src"].startswith("data:image/png;base64,")
    result = client.post(f"/api/cases?token={TOKEN}", files=case_files(folders["cases"])).json()
    csv_text = client.get(f"/api/answers.csv?token={TOKEN}").text
    json_rows = json.loads(client.get(f"/api/answers.json?token={TOKEN}").text)
    names = sorted(p.name for p in folders["cases"].iterdir())
    monkeypatch.chdir(folders["cases"])  # predict then names the cases as the page does
    code = cli.main(["predict", "--checkpoint", str(folders["ckpt"]), "--support", str(folders["support"]),
                     "--query", *names, "--csv", str(tmp_path / "p.csv"), "--json", str(tmp_path / "p.json")])
    assert code == 0, capsys.readouterr().err
    assert csv_text == (tmp_path / "p.csv").read_bytes().decode()
    assert json_rows == json.loads((tmp_path / "p.json").read_text())
    assert [r["query"] for r in result["cases"]] == names


def test_the_reliability_check_runs_kshot_over_the_support_folder(folders):
    client = client_for(folders)
    client.post(f"/api/support?token={TOKEN}", files=support_files(folders["support"]))
    assert client.post(f"/api/reliability?token={TOKEN}", json={"episodes": 20}).status_code == 200
    for _ in range(600):  # the job runs in a thread; poll as the page does
        job = client.get(f"/api/job?token={TOKEN}").json()
        if not job["running"]:
            break
        time.sleep(0.05)
    assert job["error"] is None and job["done"] == job["total"] == 40  # 1-shot and 3-shot, 20 trials each
    assert [r["shots"] for r in job["result"]["rows"]] == [1, 3]
    assert {b["name"] for b in job["result"]["baselines"]} == {"nearest-centroid-raw-pixels", "logistic-regression-raw-pixels"}
    names = sorted(p.name for p in folders["support"].iterdir())
    for row in job["result"]["rows"]:  # what the page draws: per-class table, confusion matrix, reliability diagram
        assert list(row["per_class"]) == names and sum(r["queries"] for r in row["per_class"].values()) == 20 * len(names)
        assert row["confusion"]["classes"] == names and len(row["confusion"]["counts"]) == len(names)
        assert len(row["calibration"]["bins"]) == 15 and 0 <= row["calibration"]["ece"] <= 1


def test_nearest_support_ranks_by_centred_cosine():
    support = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    cases = np.array([[0.9, 0.1], [0.1, -2.0]])
    assert nearest_support(support, cases, k=2).tolist() == [[0, 1], [3, 0]]


def test_serve_needs_a_free_port_and_a_real_checkpoint(folders, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code = cli.main(["serve", "--checkpoint", str(folders["ckpt"]), "--port", str(port), "--no-browser"])
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert cli.main(["serve", "--checkpoint", "no-such.pt", "--no-browser"]) == 2
    assert "no-such.pt does not exist" in capsys.readouterr().err
    assert cli.main(["serve", "--port", "0", "--no-browser"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err


def test_finetuned_answers_say_the_calibration_was_fitted_without_fine_tuning(folders, tmp_path):
    pytest.importorskip("timm")
    import torch

    from fewshot_mann.reporting.calibration import Calibration, ShotsCalibration

    ckpt = torch.load(tiny_backbone_checkpoint(tmp_path / "timm.pt"), weights_only=True)
    ckpt["calibration"] = Calibration("unit test", 3, (ShotsCalibration(3, 0.5, -1e9),)).to_dict()
    calibrated = tmp_path / "calibrated.pt"
    torch.save(ckpt, calibrated)
    session = Session([str(calibrated)])
    session.choose_model(str(calibrated))
    client = TestClient(create_app(session, TOKEN, Limits()))
    warnings = {}
    for steps in ("0", "2"):
        assert client.post(f"/api/support?token={TOKEN}", data={"finetune": steps},
                           files=support_files(folders["support"])).status_code == 200
        warnings[steps] = client.post(f"/api/cases?token={TOKEN}", files=case_files(folders["cases"])).json()["warnings"]
    note = [w for w in warnings["2"] if "fitted without fine-tuning" in w]
    assert len(note) == 1 and "--finetune 2" in note[0] and "uncalibrated" in note[0]
    assert not any("fitted without fine-tuning" in w for w in warnings["0"])


def test_fine_tuning_a_support_of_one_image_a_class_is_noted_on_the_page_as_in_predict(folders, tmp_path):
    """One image a class: the support view's warnings say fine-tuning measured no better there (predict prints the
    same line); two or more a class, or no fine-tuning: nothing said."""
    pytest.importorskip("timm")
    from fewshot_mann.engine.predict import one_shot_finetune_note

    ckpt = tiny_backbone_checkpoint(tmp_path / "timm.pt")
    session = Session([str(ckpt)])
    session.choose_model(str(ckpt))
    client = TestClient(create_app(session, TOKEN, Limits()))
    one = tmp_path / "one"
    for c in sorted(p for p in folders["support"].iterdir() if p.is_dir()):
        (one / c.name).mkdir(parents=True)
        first = sorted(c.iterdir())[0]
        (one / c.name / first.name).write_bytes(first.read_bytes())
    note = one_shot_finetune_note([1], 2)
    said = {}
    for name, root, steps in (("one, tuned", one, "2"), ("one, frozen", one, "0"), ("four, tuned", folders["support"], "2")):
        view = client.post(f"/api/support?token={TOKEN}", data={"finetune": steps}, files=support_files(root))
        assert view.status_code == 200, view.text
        said[name] = note in view.json()["warnings"]
    assert said == {"one, tuned": True, "one, frozen": False, "four, tuned": False}


def test_the_page_answers_with_the_checkpoints_calibration_as_predict_does(folders, tmp_path, monkeypatch, capsys):
    import torch

    from fewshot_mann.reporting.calibration import Calibration, ShotsCalibration

    ckpt = torch.load(folders["ckpt"], weights_only=True)
    ckpt["calibration"] = Calibration("unit test", 3, (ShotsCalibration(3, 0.5, 1e9),)).to_dict()
    calibrated = tmp_path / "calibrated.pt"
    torch.save(ckpt, calibrated)
    session = Session([str(calibrated)])
    session.choose_model(str(calibrated))
    client = TestClient(create_app(session, TOKEN, Limits()))
    client.post(f"/api/support?token={TOKEN}", files=support_files(folders["support"]))
    result = client.post(f"/api/cases?token={TOKEN}", files=case_files(folders["cases"])).json()
    assert all(r["unknown"] is True for r in result["cases"])  # a threshold above every score
    names = sorted(p.name for p in folders["cases"].iterdir())
    monkeypatch.chdir(folders["cases"])
    assert cli.main(["predict", "--checkpoint", str(calibrated), "--support", str(folders["support"]),
                     "--query", *names, "--json", str(tmp_path / "p.json")]) == 0, capsys.readouterr().err
    assert json.loads(client.get(f"/api/answers.json?token={TOKEN}").text) == json.loads((tmp_path / "p.json").read_text())


def test_finetuned_answers_equal_predict_finetunes_and_pixel_models_refuse_it_in_one_line(folders, tmp_path,
                                                                                            monkeypatch, capsys):
    pytest.importorskip("timm")
    ckpt = tiny_backbone_checkpoint(tmp_path / "timm.pt")
    session = Session([str(ckpt)])
    session.choose_model(str(ckpt))
    client = TestClient(create_app(session, TOKEN, Limits()))
    assert client.get(f"/api/state?token={TOKEN}").json()["model"]["finetune"] is True
    view = client.post(f"/api/support?token={TOKEN}", data={"finetune": "3"}, files=support_files(folders["support"]))
    assert view.status_code == 200 and view.json()["finetune"] == 3
    job = client.get(f"/api/job?token={TOKEN}").json()  # what the page's progress bar read, step by step
    assert job["task"] == "fine-tuning" and job["done"] == job["total"] == 3 and not job["running"]
    assert client.post(f"/api/cases?token={TOKEN}", files=case_files(folders["cases"])).status_code == 200
    names = sorted(p.name for p in folders["cases"].iterdir())
    monkeypatch.chdir(folders["cases"])
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(folders["support"]), "--query", *names,
                     "--finetune", "3", "--json", str(tmp_path / "p.json")]) == 0, capsys.readouterr().err
    assert json.loads(client.get(f"/api/answers.json?token={TOKEN}").text) == json.loads((tmp_path / "p.json").read_text())

    pixels = client_for(folders)
    r = pixels.post(f"/api/support?token={TOKEN}", data={"finetune": "2"}, files=support_files(folders["support"]))
    assert r.status_code == 400 and "\n" not in r.json()["error"]
    assert r.json()["error"].startswith("fine-tuning needs a timm backbone model; ")
    assert pixels.get(f"/api/state?token={TOKEN}").json()["model"]["finetune"] is False
    r = pixels.post(f"/api/support?token={TOKEN}", data={"finetune": "99999"}, files=support_files(folders["support"]))
    assert r.status_code == 400 and r.json()["error"] == "fine-tune steps must be between 0 and 2000 (got 99999)"
