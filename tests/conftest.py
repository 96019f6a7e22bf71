"""Shared fixtures: tiny models built in-process, shipped configs built on the meta device, golden
output files (`pytest --overwrite` rewrites them from the current output)."""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Tests never write to the user's cache, and never reach the Hub.
os.environ["FREEZELAB_CACHE"] = tempfile.mkdtemp(prefix="freezelab-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from freezelab.models import build, index_of  # noqa: E402
from freezelab.sources import known_names, resolve  # noqa: E402

GOLDEN_DIR = ROOT / "tests" / "test_output"


def pytest_addoption(parser):
    parser.addoption("--overwrite", action="store_true", default=False,
                     help="rewrite the golden files in tests/test_output/ with the current output")


@pytest.fixture()
def golden(request):
    """`golden(name, text)`: `text` must equal tests/test_output/NAME.out (with --overwrite: becomes it)."""
    overwrite = request.config.getoption("--overwrite")

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / f"{name}.out"
        if overwrite:
            GOLDEN_DIR.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"{path} does not exist; run pytest with --overwrite to create it")
        expected = path.read_text(encoding="utf-8")
        if text != expected:
            diff = difflib.unified_diff(expected.splitlines(keepends=True), text.splitlines(keepends=True),
                                        f"{path.name} (expected)", f"{path.name} (now)")
            pytest.fail("the output differs from its golden file (pytest --overwrite accepts it):\n"
                        + "".join(diff))

    return check


@pytest.fixture(scope="session")
def tiny_source():
    return resolve("tiny")


@pytest.fixture(scope="session")
def tiny_index(tiny_source):
    return index_of(tiny_source, dtype="fp32")


@pytest.fixture()
def tiny_model(tiny_source):
    return build(tiny_source, device="cpu", dtype="fp32", seed=0)


@pytest.fixture(scope="session")
def shipped_indexes():
    return {name: index_of(resolve(name)) for name in known_names()}


@pytest.fixture(scope="module")
def server():
    """`python app.py` on a free loopback port (one per test module), as a user or a Space starts it."""
    from freezelab.ui.launch import launch, stop

    proc, url = launch()
    yield url
    stop(proc)
