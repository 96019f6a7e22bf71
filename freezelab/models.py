"""Building models from a Source: on the meta device (architecture only), with
random weights on a real device, or with a checkpoint's weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezelab.errors import FreezelabError, SourceError
from freezelab.families import config_from_dict, model_class
from freezelab.index import ModelIndex, build_index, cache_key, load_cached, store_cached
from freezelab.sources import BIN_INDEX, SAFETENSORS_INDEX, Source
from freezelab.workload import DTYPE_BYTES, TORCH_DTYPE_NAMES, Dtype

if TYPE_CHECKING:
    import torch


def torch_dtype(name: Dtype) -> torch.dtype:
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[name])


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def refused_by_transformers(source: Source, failed: str, device: str = "cpu",
                            hide: Path | None = None) -> Iterator[None]:
    """The one place where an exception that transformers or torch raise on user input (a config they refuse,
    weights they cannot load) becomes a SourceError with its first line. Their checks raise many types:
    ValueError, TypeError, KeyError, StrictDataclassError, an AssertionError from torch (a pad_token_id beyond
    the vocabulary), ZeroDivisionError, ...; each means "this input is refused", not a bug in freezelab.
    `hide`: a temporary path that must not appear in the message (the spec stands for it)."""
    try:
        yield
    except FreezelabError:
        raise
    except ImportError as err:  # a sub-model whose optional package is missing (e.g. timm)
        raise SourceError(f"{source.spec}: this config needs a package that is not installed: "
                          f"{_first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - see the docstring: any type, one message
        if _out_of_memory(err):
            raise SourceError(f"{source.name}: not enough {device} memory for its weights") from None
        message = _first_line(err)
        message = message.replace(str(hide), source.spec) if hide else message
        raise SourceError(f"{source.spec}: {failed}: {message}") from None


def _out_of_memory(err: Exception) -> bool:
    torch = sys.modules.get("torch")  # reading a config does not import torch
    return isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError))


def hf_config(source: Source) -> Any:
    with refused_by_transformers(source, "the config could not be read by transformers"):
        return config_from_dict(source.config)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__


@contextlib.contextmanager
def _pinned_dtype(config: Any, dtype: torch.dtype) -> Iterator[None]:
    """Every (sub-)config in `dtype` while the model is built: a checkpoint's torch_dtype (float16 in
    many LLaVA text configs) would otherwise win over the default dtype for the sub-models built from
    their own config. The recorded dtypes are restored afterwards, so the config stays the checkpoint's."""
    subs = [config, *(getattr(config, key) for key in getattr(config, "sub_configs", {}))]
    subs = [sub for sub in subs if sub is not None]
    saved = [sub.dtype for sub in subs]
    for sub in subs:
        sub.dtype = dtype
    try:
        yield
    finally:
        for sub, old in zip(subs, saved):
            sub.dtype = old


def build(source: Source, *, device: str = "meta", dtype: Dtype = Dtype.BF16,
          seed: int | None = 0) -> torch.nn.Module:
    """The model of `source` with random weights on `device` (no weight memory on "meta")."""
    import torch

    config = hf_config(source)
    config.use_cache = False
    if seed is not None and device != "meta":
        torch.manual_seed(seed)
    with (refused_by_transformers(source, "transformers could not build this config", device),
          torch.device(device), _default_dtype(torch_dtype(dtype)), _pinned_dtype(config, torch_dtype(dtype))):
        return model_class(source.model_type)(config)


def lift_zero_projections(model: torch.nn.Module, index: ModelIndex, seed: int = 0) -> list[str]:
    """Give small random values to projector matrices a random build leaves at exactly zero.

    transformers initialises Gemma 3's `mm_input_projection_weight` to zeros (modeling_gemma3.py
    `_init_weights`): with random weights no gradient would then reach the vision tower, a failure the
    real checkpoint never shows. Adapter weights (LoRA's zero-initialised B) are left alone. Returns the
    names changed."""
    import torch

    named = dict(model.named_parameters())
    changed = []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for p in index.params:
        t = named.get(p.name)
        if (t is None or p.component != "projector" or t.dim() != 2 or "lora_" in p.name
                or t.is_meta or torch.count_nonzero(t).item() != 0):
            continue
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=gen) * 0.02)
        changed.append(p.name)
    return changed


def available_ram() -> int:
    """Bytes of RAM the process could still use (MemAvailable), or a large number if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_file_room(source: Source, device: str) -> None:
    """Refuse before reading a checkpoint whose weight files alone exceed the free memory of `device`."""
    need = source.weight_bytes
    if device == "cpu":
        have, where = available_ram(), "free RAM"
    elif device.startswith("cuda"):
        import torch

        have, where = torch.cuda.mem_get_info(device)[0], f"free memory on {device}"
    else:
        return
    if need > have:
        raise SourceError(f"{source.name}: its weight files hold {need / 2**30:.1f} GiB but only {have / 2**30:.1f} GiB "
                          f"of {where} is left; inspect it architecture-only instead")


@contextlib.contextmanager
def _checked_files(source: Source) -> Iterator[Path]:
    """A temporary directory holding only what freezelab checked: links to the weight files it located and,
    for a sharded checkpoint, an index written from the weight_map it validated. Nothing else of the
    checkpoint directory (its config.json, generation_config.json, an index naming other files) can be read
    through it."""
    with tempfile.TemporaryDirectory(prefix="freezelab-weights-") as tmp:
        directory = Path(tmp)
        for path in source.weights:
            os.symlink(path.resolve(), directory / path.name)
        if source.weight_map:
            name = SAFETENSORS_INDEX if source.weight_format == "safetensors" else BIN_INDEX
            (directory / name).write_text(json.dumps({"metadata": {}, "weight_map": source.weight_map}))
        yield directory


def load_weights(source: Source, *, dtype: Dtype, device: str = "cpu") -> torch.nn.Module:
    """The checkpoint's model with its weights: safetensors first, .bin only with weights_only=True (a pickle
    holding anything but tensors is refused, never executed), and never code shipped with the checkpoint.

    from_pretrained gets the config freezelab read and checked (config.json is not read again) and a
    directory of the checked weight files only."""
    import pickle

    import torch
    from transformers import GenerationConfig

    if not source.weights:
        raise SourceError(f"{source.spec}: no weight files (*.safetensors or *.bin) next to its config.json")
    check_file_room(source, device)
    config = hf_config(source)
    with _checked_files(source) as directory, \
            refused_by_transformers(source, "the weights could not be loaded", device, hide=directory):
        try:
            model, info = model_class(source.model_type).from_pretrained(
                directory, config=config, generation_config=GenerationConfig.from_model_config(config),
                dtype=torch_dtype(dtype), use_safetensors=source.weight_format == "safetensors",
                weights_only=True, trust_remote_code=False, output_loading_info=True, local_files_only=True,
                # device_map needs the accelerate package; CPU is from_pretrained's default anyway
                **({} if device == "cpu" else {"device_map": device}),
            )
        except pickle.UnpicklingError:
            raise SourceError(f"{source.spec}: refused to load {source.weights[0].name}: it holds objects other "
                              "than tensors, which could run code; convert the checkpoint to safetensors") from None
    missing = sorted(info.get("missing_keys", []))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise SourceError(f"{source.spec}: the checkpoint lacks {len(missing)} weight(s): {shown}")
    model.config.use_cache = False
    return model


def index_of(source: Source, *, dtype: Dtype = Dtype.BF16) -> ModelIndex:
    """The architecture's index (parameters in `dtype`), from the cache or the shipped
    indexes when possible: no torch import then."""
    key = cache_key(source.config)
    index = load_cached(key)
    if index is None:
        index = build_index(build(source, device="meta", dtype=Dtype.BF16), source.name, meta=True)
        store_cached(key, index)
    index.name = source.name
    index.processor = dict(source.processor)
    return index.with_dtype(TORCH_DTYPE_NAMES[dtype])
