"""Hub ids (`org/name`): only `config.json`, and never a long wait when the Hub cannot be reached.

* The Hub id of a shipped architecture (`_freezelab.hub_id` in assets/configs/*.json; repo ids are
  case-insensitive on the Hub) resolves to the shipped config at once, with no network at all.
* `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`), read as huggingface_hub reads it (its `constants`):
  only the local Hugging Face cache is looked at, and no socket is opened.
* Otherwise one metadata request (HEAD) with a short timeout and no retries checks that the Hub
  answers and that the file is small. When it cannot be reached, the local cache answers at once.
  (huggingface_hub's own `hf_hub_download` retries a failed HEAD five times with back-off, about
  24 s, before it looks in the cache: file_download.py, `retry_on_errors=True` after a first failure.)

Every failure is one SourceError naming the repo, what happened and where the cache is.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from freezelab.errors import SourceError

PROBE_TIMEOUT_S = 3.0   # one HEAD to the Hub; it answers in well under a second when reachable


@lru_cache(maxsize=4)
def _shipped(known_dir: Path) -> dict[str, tuple[str, str]]:
    """Lower-cased Hub id -> (shipped architecture name, the Hub id as spelled on the Hub)."""
    out = {}
    for path in sorted(known_dir.glob("*.json")):
        hub_id = json.loads(path.read_text(encoding="utf-8")).get("_freezelab", {}).get("hub_id")
        if hub_id:
            out[hub_id.lower()] = (path.stem, hub_id)
    return out


def shipped(repo_id: str, known_dir: Path) -> tuple[str, str] | None:
    """(name, Hub id) of the shipped architecture whose Hub id this is (case-insensitive), or None."""
    return _shipped(known_dir).get(repo_id.strip().lower())


def offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, as huggingface_hub read them at import."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _from_cache(repo_id: str, why: str) -> Path:
    """The cached config.json, read without any network; `why` the Hub was not asked."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=True))
    except LocalEntryNotFoundError:
        raise SourceError(f"{repo_id}: {why}, and its config.json is not in the local Hugging Face cache "
                          f"({_cache_dir()})") from None


def _probe(repo_id: str, max_bytes: int) -> str | None:
    """One HEAD request, no retries: None when the Hub answered that the file is there and small
    enough, else why the Hub cannot be used now (the cache is asked instead)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=PROBE_TIMEOUT_S, retry_on_errors=False)
    except GatedRepoError:
        raise SourceError(f"{repo_id}: gated on the Hub; log in (hf auth login) and accept its terms first") from None
    except RepositoryNotFoundError:
        raise SourceError(f"{repo_id}: no such model on the Hub (or it is private)") from None
    except EntryNotFoundError:
        raise SourceError(f"{repo_id}: the Hub repo has no config.json") from None
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set"
    except HfHubHTTPError as err:  # the Hub answered, with an error of its own (5xx, 429, ...)
        status = err.response.status_code if err.response is not None else "an error"
        return f"the Hugging Face Hub answered {status}"
    except Exception as err:  # noqa: BLE001 - any transport failure (DNS, refused, timeout, proxy) means unreachable
        return f"the Hugging Face Hub cannot be reached ({err.__class__.__name__})"
    if meta.size is not None and meta.size > max_bytes:
        raise SourceError(f"{repo_id}: its config.json is {meta.size:,} bytes on the Hub; too large for a config file")
    return None


def fetch_config(repo_id: str, *, max_bytes: int) -> Path:
    """The path of the repo's config.json: from the Hub when it answers at once, else from the cache."""
    if offline():
        return _from_cache(repo_id, "HF_HUB_OFFLINE is set")
    why = _probe(repo_id, max_bytes)
    if why is not None:
        return _from_cache(repo_id, why)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "config.json", etag_timeout=PROBE_TIMEOUT_S))
    except Exception as err:  # noqa: BLE001 - the connection dropped between the check and the download
        raise SourceError(f"{repo_id}: could not fetch config.json ({err.__class__.__name__}: {err})") from None
