"""Shared fixtures: an isolated cache for the session, the real Omniglot (skipped when absent).
Helpers that are not fixtures (tiny configs, synthetic banks, ...) live in tests/helpers/."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import OMNIGLOT, real_omniglot


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never write to the user's cache; the decoded Omniglot is shared by the session."""
    old = os.environ.get("FEWSHOT_MANN_CACHE")
    os.environ["FEWSHOT_MANN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    data = os.environ.pop("FEWSHOT_MANN_DATA", None)  # no data root but what a test gives
    torch.set_num_threads(1)
    yield
    if data is not None:
        os.environ["FEWSHOT_MANN_DATA"] = data
    if old is None:
        os.environ.pop("FEWSHOT_MANN_CACHE", None)
    else:
        os.environ["FEWSHOT_MANN_CACHE"] = old


@pytest.fixture
def omniglot_root() -> Path:
    """Tests that need the real zips (other image sizes, the decoder itself) skip without them."""
    if real_omniglot() is None:
        pytest.skip(f"real Omniglot zips not found in {OMNIGLOT} (see ../shared/datasets/README.md); "
                    "set FEWSHOT_MANN_TEST_OMNIGLOT to run this test")
    return OMNIGLOT


@pytest.fixture
def omniglot_source() -> Path | None:
    """A ``load_omniglot`` root: the real zips when present, else None (the embedded copy)."""
    return real_omniglot()


@pytest.fixture
def omniglot_args() -> list[str]:
    """Command-line data arguments for a 20x20 Omniglot run: the real zips when present, else none
    (the embedded copy), so these tests never skip for want of Omniglot."""
    root = real_omniglot()
    return ["--data-root", str(root)] if root else []
