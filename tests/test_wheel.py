"""The project as a user installs it: a wheel, in a fresh virtual environment, run from elsewhere.

The wheel must carry everything the code reads at run time (class splits, the C++ kernel
source, the embedded Omniglot, the bundled model); training and evaluation then work from a
directory outside the repository with no data root (the embedded set).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the build uses the installed setuptools, so no network is needed
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, text=True, timeout=300)
    (found,) = out.glob("fewshot_mann-*.whl")
    return found


def test_wheel_holds_the_run_time_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("fewshot_mann/data/splits/omniglot_santoro.json", "fewshot_mann/data/splits/omniglot_lake.json",
                   "fewshot_mann/memory/lrua/lrua.cpp", "fewshot_mann/assets/omniglot-20px.npy.xz",
                   "fewshot_mann/assets/omniglot-20px.json", "fewshot_mann/assets/LICENSE.omniglot",
                   "fewshot_mann/assets/models/models.json", "fewshot_mann/assets/models/omniglot-5way.pt",
                   "fewshot_mann/app/page/index.html", "fewshot_mann/app/page/app.js", "fewshot_mann/app/page/app.css"):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "reports/", "data/")) for n in names)


def test_wheel_installs_and_runs_outside_the_repo(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, text=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FEWSHOT_MANN_DATA", "PYTHONPATH")}
    env["FEWSHOT_MANN_CACHE"] = str(tmp_path / "cache")  # no downloaded copy: the embedded set is used
    located = subprocess.run([str(py), "-c", "import fewshot_mann; print(fewshot_mann.__file__)"], cwd=work,
                             env=env, capture_output=True, text=True, check=True)
    assert str(env_dir) in located.stdout, "the wheel's copy must be the one imported, not the checkout"
    cli = str(env_dir / "bin" / "fewshot-mann")
    train = subprocess.run([cli, "train", "--episodes", "64", "--eval-every", "0", "--out", "R"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    assert "embedded" in train.stderr
    assert "held-out (test) classes" in train.stdout and "R/checkpoint.pt" in train.stdout  # the final table
    assert (work / "R" / "checkpoint.pt").is_file()
    out = work / "eval.json"
    ev = subprocess.run([cli, "evaluate", "--checkpoint", "R/checkpoint.pt", "--episodes", "20", "--json", str(out)],
                        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr
    res = json.loads(out.read_text())
    assert res["episodes"] == 20 and len(res["accuracy_by_instance"]) == 10
    models = subprocess.run([cli, "models"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert models.returncode == 0 and "omniglot-5way" in models.stdout
