"""Model sources: one resolver turns the MODEL argument into a config and, where
present, weight files.

MODEL is one of
  * ``tiny``: the built-in tiny LLaVA (random weights, builds in a blink);
  * a known architecture name (configs shipped in assets/configs/);
  * a path to a ``config.json`` or to a checkpoint directory;
  * a Hub id ``org/name``: the shipped config when it is a shipped architecture's,
    else only its ``config.json`` is fetched (from the local Hugging Face cache
    at once when there is no network or HF_HUB_OFFLINE is set; freezelab.hub).

Nothing here imports torch: resolving and reading a config is instant.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freezelab import hub
from freezelab.config_bounds import check_sizes
from freezelab.errors import SourceError
from freezelab.families import check_family
from freezelab.policy import LOCAL, Policy

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_CONFIG = ASSETS / "tiny" / "config.json"
KNOWN_DIR = ASSETS / "configs"
MAX_CONFIG_BYTES = 1_000_000  # real configs are a few KB; refuse to parse a huge file

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class Source:
    spec: str                      # what the user typed
    kind: str                      # "tiny" | "known" | "config" | "checkpoint" | "hub"
    name: str                      # short display name
    config: dict[str, Any] = field(repr=False, compare=False, hash=False, default_factory=dict)
    weights: tuple[Path, ...] = ()  # weight files, safetensors preferred; empty if none
    model_type: str = ""
    # a sharded checkpoint's index, checked: parameter name -> shard file name
    weight_map: dict[str, str] = field(repr=False, compare=False, hash=False, default_factory=dict)
    # the image processor's settings that change token counts (freezelab.tokens), with their "source"
    processor: dict[str, Any] = field(repr=False, compare=False, hash=False, default_factory=dict)

    @property
    def has_weights(self) -> bool:
        return bool(self.weights) or self.kind == "tiny"

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight files on disk: what loading them reads, checked against limits and free memory."""
        total = 0
        for path in self.weights:
            try:
                total += path.stat().st_size
            except OSError:
                pass  # a vanished file is reported by the loader
        return total

    @property
    def weight_format(self) -> str | None:
        if not self.weights:
            return None
        return "safetensors" if self.weights[0].suffix == ".safetensors" else "bin"


def known_names() -> list[str]:
    return sorted(p.stem for p in KNOWN_DIR.glob("*.json"))


def known_info() -> list[dict[str, Any]]:
    """Name, title and description of each shipped architecture (for menus and `models`)."""
    rows = []
    for name in known_names():
        meta = read_json(KNOWN_DIR / f"{name}.json").get("_freezelab", {})
        rows.append({"name": name, "title": meta.get("title", name), "hub_id": meta.get("hub_id"),
                     "description": meta.get("description", "")})
    return rows


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from `path` with one clear message for every way it can be wrong."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if not path.is_file():
        raise SourceError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise SourceError(f"{path}: the file is empty")
    if size > MAX_CONFIG_BYTES:
        raise SourceError(f"{path}: {size:,} bytes is too large for a config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not a text file (is it a weights file?)") from None
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}: broken JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except (ValueError, RecursionError):  # a number of thousands of digits, or nesting thousands deep
        raise SourceError(f"{path}: not a usable JSON config (absurdly long numbers or deep nesting)") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain_file_name(name: str) -> bool:
    """A name that can only mean a file directly inside the checkpoint directory."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
            and Path(name).name == name)


def shard_map(directory: Path, index_name: str) -> dict[str, str]:
    """The weight_map of a shard index (parameter name -> shard file), every shard a plain file name inside
    `directory`: a name such as ../../etc/passwd is refused in every mode."""
    weight_map = read_json(directory / index_name).get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SourceError(f"{directory}: {index_name} has no usable weight_map (parameter name -> shard file name)")
    for shard in sorted(set(weight_map.values())):
        if not _plain_file_name(shard):
            raise SourceError(f"{directory}: {index_name} names a shard that is not a file name inside the checkpoint "
                              f"directory: {_short(shard)}")
    return weight_map


def weight_files(directory: Path) -> tuple[tuple[Path, ...], dict[str, str]]:
    """Weight files of a checkpoint directory, safetensors first (.bin only if there is no safetensors), and the
    shard index's weight_map when there is one."""
    for index_name, pattern in ((SAFETENSORS_INDEX, "*.safetensors"), (BIN_INDEX, "*.bin")):
        if (directory / index_name).is_file():
            weight_map = shard_map(directory, index_name)
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise SourceError(f"{directory}: {index_name} names missing shard(s): {', '.join(missing[:3])}")
            return tuple(directory / s for s in shards), weight_map
        found = sorted(p for p in directory.glob(pattern) if p.is_file())
        if found:
            return tuple(found), {}
    return (), {}


# image processor settings that change how many tokens an image becomes (freezelab.tokens reads them)
PROCESSOR_KEYS = ("size", "min_pixels", "max_pixels", "patch_size", "merge_size", "temporal_patch_size",
                  "max_image_size", "do_image_splitting", "crop_to_patches", "min_patches", "max_patches",
                  "do_pan_and_scan")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def processor_settings(directory: Path) -> dict[str, Any]:
    """The token-relevant settings of a checkpoint's image processor files (nested `image_processor`
    sections included), or {} when it ships none."""
    for name in PROCESSOR_FILES:
        path = directory / name
        if not path.is_file():
            continue
        data = read_json(path)
        data = data.get("image_processor", data) if isinstance(data.get("image_processor"), dict) else data
        found = {k: data[k] for k in PROCESSOR_KEYS if k in data}
        if found:
            return {**found, "source": f"the checkpoint's {name}"}
    return {}


def _processor(config: dict[str, Any], kind: str, directory: Path) -> dict[str, Any]:
    if kind == "checkpoint":
        return processor_settings(directory)
    shipped = (config.get("_freezelab") or {}).get("processor") if kind in ("known", "tiny") else None
    return dict(shipped) if isinstance(shipped, dict) else {}


def _from_config_file(spec: str, path: Path, kind: str, name: str) -> Source:
    config = read_json(path)
    origin = str(path) if kind != "known" else name
    model_type = check_family(config, origin)
    check_sizes(config, origin)
    weights, weight_map = weight_files(path.parent) if kind == "checkpoint" else ((), {})
    return Source(spec=spec, kind=kind, name=name, config=config, weights=weights, model_type=model_type,
                  weight_map=weight_map, processor=_processor(config, kind, path.parent))


def _from_path(spec: str, path: Path) -> Source:
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise SourceError(f"{path}: a checkpoint directory needs a config.json, found none")
        return _from_config_file(spec, config, "checkpoint", path.name)
    if path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
        raise SourceError(f"{path}: pass the checkpoint directory (with its config.json), not a weights file")
    return _from_config_file(spec, path, "config", path.stem if path.name != "config.json" else path.parent.name)


def _from_hub(spec: str) -> Source:
    """A Hub id: the shipped config when it names a shipped architecture (no network), else
    config.json from the Hub or the local cache (freezelab.hub). The id is checked by the Hub's own rules
    first (no '--' or '..', no '-' or '.' at either end), offline."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError as err:
        raise SourceError(f"{spec}: not a valid Hub id: {str(err).splitlines()[0]}") from None
    shipped = hub.shipped(spec, KNOWN_DIR)
    if shipped is not None:
        name, hub_id = shipped
        return _from_config_file(spec, KNOWN_DIR / f"{name}.json", "known", f"{name}, shipped config of {hub_id}")
    return _from_config_file(spec, hub.fetch_config(spec, max_bytes=MAX_CONFIG_BYTES), "hub", spec)


def _unknown(spec: str) -> SourceError:
    names = ["tiny", *known_names()]
    close = difflib.get_close_matches(spec.lower(), names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known names: {', '.join(names)}"
    return SourceError(
        f"unknown model {spec!r}: not a built-in name, an existing path or a Hub id (org/name){hint}"
    )


def resolve(spec: str, *, policy: Policy = LOCAL) -> Source:
    """Turn a MODEL argument into a Source (config read and checked, weights located).

    Under a public policy, paths must lie inside its roots (symlinks resolved)."""
    if not isinstance(spec, str):
        raise SourceError(f"a model must be named by text, got {type(spec).__name__}")
    spec = spec.strip()
    if not spec:
        raise SourceError("no model given: use tiny, a known name, a path or a Hub id")
    lowered = spec.lower()
    if lowered == "tiny":
        return _from_config_file(spec, TINY_CONFIG, "tiny", "tiny")
    if lowered in known_names():
        return _from_config_file(spec, KNOWN_DIR / f"{lowered}.json", "known", lowered)
    if "\x00" in spec or len(spec) > 4096:
        raise SourceError("not a valid model name or path")
    path = Path(spec).expanduser()
    # In public mode whether a name exists on disk must not decide how it is answered (an existence oracle):
    # only its form makes it a path there.
    looks_like_path = (spec.startswith((".", "/", "~")) or spec.endswith(".json") or "\\" in spec
                       or (not _HUB_ID.match(spec) and os.sep in spec) or (not policy.public and _exists(path)))
    if looks_like_path:
        path = policy.check_path(spec)
        if not path.exists():
            raise SourceError(f"{spec}: no such file or directory")
        if path.is_dir():  # a checkpoint: its loaders open config, index, shards and processor files in it
            policy.check_directory(path, spec)
        return _from_path(spec, path)
    if _HUB_ID.match(spec):
        return _from_hub(spec)
    raise _unknown(spec)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system
        return False
