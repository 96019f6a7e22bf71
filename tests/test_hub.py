"""Hub ids never wait on a network that is not there: shipped architectures' Hub ids map to the shipped
configs with no network at all, HF_HUB_OFFLINE opens no socket, and an unreachable Hub costs one request
without retries or back-off sleeps before the local cache answers."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub.constants as hub_constants
import pytest

from freezelab.errors import SourceError
from freezelab.sources import TINY_CONFIG, known_info, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def no_network(monkeypatch):
    """Every way to open a connection fails the test, and so does any back-off sleep."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network used: {args[:2]}")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"slept {s} s (a retry back-off)"))


@pytest.fixture()
def hf_cache(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def cache_config(cache: Path, repo: str) -> None:
    """A config.json in the layout hf_hub_download writes (refs/main -> snapshots/<commit>/)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    (folder / "snapshots" / COMMIT / "config.json").write_text(TINY_CONFIG.read_text())


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "online"])
def test_shipped_hub_ids_need_no_network(monkeypatch, no_network, offline):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline)
    rows = [r for r in known_info() if r["hub_id"]]
    assert len(rows) == 26  # every shipped architecture names its Hub id
    for row in rows:
        for spelling in (row["hub_id"], row["hub_id"].upper()):  # Hub repo ids are case-insensitive
            src = resolve(spelling)
            assert (src.kind, src.name) == ("known", f"{row['name']}, shipped config of {row['hub_id']}")
            assert src.config == resolve(row["name"]).config


def test_hf_hub_offline_opens_no_socket(monkeypatch, no_network, hf_cache):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError) as err:
        resolve("someorg/some-llava")
    assert str(err.value) == (f"someorg/some-llava: HF_HUB_OFFLINE is set, and its config.json is not in the "
                              f"local Hugging Face cache ({hf_cache})")
    cache_config(hf_cache, "someorg/some-llava")
    src = resolve("someorg/some-llava")
    assert (src.kind, src.name, src.model_type) == ("hub", "someorg/some-llava", "llava")


def test_unreachable_hub_is_asked_once_then_the_cache(monkeypatch, hf_cache):
    """No DNS (as on a machine without network): one lookup, no retry, no sleep, then the cache."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    lookups = []

    def no_dns(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"slept {s} s (a retry back-off)"))
    with pytest.raises(SourceError) as err:
        resolve("someorg/some-llava")
    assert str(err.value) == ("someorg/some-llava: the Hugging Face Hub cannot be reached (ConnectError), and its "
                              f"config.json is not in the local Hugging Face cache ({hf_cache})")
    host = urlparse(hub_constants.ENDPOINT).hostname
    assert lookups == [host]
    cache_config(hf_cache, "someorg/some-llava")
    assert resolve("someorg/some-llava").kind == "hub"
    assert lookups == [host] * 2
