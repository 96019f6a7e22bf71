"""Shared fixtures: tiny models built in-process, shipped configs built on the meta device."""

from __future__ import annotations

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
    from benchmarks.app_server import launch, stop

    proc, url = launch()
    yield url
    stop(proc)
