"""The web app in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
driven by Selenium through the whole workflow on a small synthetic folder: load the page with its
token, give the support folder and the cases, read the answers table, download the CSV and
compare it with ``predict``'s; then the reliability check. Each step's screenshot is written to
docs/app/ (shown in docs/app.md). Skipped, with the reason, where Chromium or the app extra is
absent; ``.ci/run`` installs both."""
from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the app extra is not installed (pip install '.[app]')")
pytest.importorskip("uvicorn", reason="the app extra is not installed (pip install '.[app]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)",
                allow_module_level=True)

import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from helpers.images import make_image_folder  # noqa: E402
from fewshot_mann.app.server import create_app  # noqa: E402
from fewshot_mann.app.session import Session  # noqa: E402
from fewshot_mann.cli import main as cli  # noqa: E402
from helpers.app import flat_cases, tiny_checkpoint  # noqa: E402

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "app"
TOKEN = "browser-test-token"
HTML_NAME = "<em>x&amp;y"  # a class folder named like markup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    session = Session([str(ckpt)])
    session.choose_model(str(ckpt))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(session, TOKEN), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", ckpt
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900",
                "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def shot(driver, name: str, show: str | None = None) -> None:
    """A screenshot of the page (scrolled to the element ``show``) into docs/app/, when asked for
    (``FEWSHOT_MANN_SCREENSHOTS=1``: a test run never changes the tracked docs otherwise)."""
    if os.environ.get("FEWSHOT_MANN_SCREENSHOTS") != "1":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    if show:
        driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, show))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait_for(driver, predicate, seconds: float = 60):
    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda d: predicate(d))


def test_the_whole_workflow_in_a_browser(server, browser, tmp_path, monkeypatch, capsys):
    url, ckpt = server
    support = make_image_folder(tmp_path / "support", classes=3, per_class=4, seed=31)["root"]
    first = sorted(support.iterdir())[0]
    first.rename(support / HTML_NAME)  # folder names reach the page as text, never as markup
    cases = flat_cases(make_image_folder(tmp_path / "raw", classes=3, per_class=2, seed=32)["root"], tmp_path / "cases")
    browser.get(url + "/")  # no token: refused
    assert "forbidden" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(f"{url}/?token={TOKEN}")
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
    assert "mann (linear), onehot labels, 3-way" in browser.find_element(By.ID, "model-info").text
    shot(browser, "1-model")

    browser.find_element(By.ID, "support-folder").send_keys(str(support))
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-support") == "3 classes")
    rows = browser.find_elements(By.CSS_SELECTOR, "#support-grid .class-row")
    assert [r.find_element(By.CLASS_NAME, "name").text for r in rows] == sorted(p.name for p in support.iterdir())
    assert [len(r.find_elements(By.TAG_NAME, "img")) for r in rows] == [4, 4, 4]
    shot(browser, "2-support", "support-section")

    names = sorted(p.name for p in cases.iterdir())
    browser.find_element(By.ID, "cases").send_keys("\n".join(str(cases / n) for n in names))
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-answers") == str(len(names)))
    table = browser.find_elements(By.CSS_SELECTOR, "#answers tbody tr")
    shown = [(r.find_element(By.CLASS_NAME, "query").text, r.find_element(By.CLASS_NAME, "prediction").text) for r in table]
    assert [q for q, _ in shown] == names
    shot(browser, "3-answers", "cases-section")

    browser.find_element(By.ID, "download-csv").click()
    csv_file = browser.downloads / "answers.csv"
    wait_for(browser, lambda d: csv_file.exists() and csv_file.stat().st_size > 0, 20)
    monkeypatch.chdir(cases)  # predict names the cases as the page does
    code = cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(support), "--query", *names,
                     "--csv", str(tmp_path / "predict.csv")])
    assert code == 0, capsys.readouterr().err
    assert csv_file.read_bytes() == (tmp_path / "predict.csv").read_bytes()
    predicted = [line.split(",")[:2] for line in (tmp_path / "predict.csv").read_text().splitlines()[1:]]
    assert [tuple(p) for p in predicted] == shown

    browser.find_element(By.ID, "episodes").clear()
    browser.find_element(By.ID, "episodes").send_keys("50")
    browser.find_element(By.ID, "reliability").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "reliability-table").is_displayed())
    methods = [r.find_element(By.TAG_NAME, "td").text for r in browser.find_elements(By.CSS_SELECTOR, "#reliability-table tbody tr")]
    assert methods == ["this model", "nearest-centroid-raw-pixels", "logistic-regression-raw-pixels"] * 2  # each row's beside it
    check_reliability_charts(browser, sorted(p.name for p in support.iterdir()), trials=50)
    shot(browser, "4-reliability", "reliability-section")
    assert not browser.find_element(By.ID, "error").is_displayed()


def texts(root, css: str) -> list[str]:
    return [e.get_attribute("textContent") for e in root.find_elements(By.CSS_SELECTOR, css)]


def check_reliability_charts(browser, classes: list[str], trials: int) -> None:
    """Each kshot row (1-shot, 3-shot) drawn: the per-class table, the confusion matrix with the class names
    on both axes, the reliability diagram with its diagonal and ECE; the HTML-looking class name as text."""
    blocks = browser.find_elements(By.CSS_SELECTOR, "#reliability-charts .trust")
    assert [b.get_attribute("data-shots") for b in blocks] == ["1", "3"]
    for block in blocks:
        rows = block.find_elements(By.CSS_SELECTOR, "table.per-class tbody tr")
        assert texts(block, "table.per-class td.class-name") == classes
        assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == [str(trials)] * 3  # one query a class a trial
        assert all(r.find_elements(By.TAG_NAME, "td")[1].text.endswith(" %") for r in rows)
        assert texts(block, "svg.confusion text.truth-name") == classes
        assert texts(block, "svg.confusion text.answer-name") == classes
        assert len(block.find_elements(By.CSS_SELECTOR, "svg.confusion rect.cell")) == 9
        assert len(block.find_elements(By.CSS_SELECTOR, "svg.reliability-diagram line.diagonal")) == 1
        assert block.find_elements(By.CSS_SELECTOR, "svg.reliability-diagram rect.bin")
        caption = block.find_element(By.CSS_SELECTOR, ".reliability-figure figcaption").text
        assert re.match(r"ECE \d\.\d{3} at temperature 1\.00, over 150 answers\.", caption), caption
    assert not browser.find_elements(By.CSS_SELECTOR, "em")  # the folder name <em>... was not read as markup


def test_an_error_is_one_line_on_the_page_and_the_page_keeps_working(server, browser, tmp_path):
    url, _ = server
    bad = tmp_path / "bad"
    (bad / "only").mkdir(parents=True)
    (bad / "only" / "x.png").write_bytes(b"not a png")
    browser.get(f"{url}/?token={TOKEN}")
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
    browser.find_element(By.ID, "support-folder").send_keys(str(bad))
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error").text
    assert "usable class" in error and "\n" not in error
    shot(browser, "5-error")
    browser.refresh()  # the server still answers
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
    good = make_image_folder(tmp_path / "good", classes=3, per_class=4, seed=33)["root"]
    browser.find_element(By.ID, "finetune").clear()
    browser.find_element(By.ID, "finetune").send_keys("2")  # this pixel model has no backbone to fine-tune
    browser.find_element(By.ID, "support-folder").send_keys(str(good))
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error").text
    assert error.startswith("fine-tuning needs a timm backbone model; ") and "\n" not in error
    assert not browser.find_element(By.ID, "busy").is_displayed()
