"""Building models from a Source: on the meta device (architecture only), with
random weights on a real device, or with a checkpoint's weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from freezelab.errors import SourceError
from freezelab.families import config_from_dict, model_class
from freezelab.index import ModelIndex, build_index, cache_key, load_cached, store_cached
from freezelab.sources import Source
from freezelab.workload import TORCH_DTYPE_NAMES, Dtype

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


def hf_config(source: Source) -> Any:
    from huggingface_hub.errors import StrictDataclassError  # transformers 5 configs validate field types

    try:
        return config_from_dict(source.config)
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, StrictDataclassError) as err:
        raise SourceError(f"{source.spec}: the config could not be read by transformers: {_first_line(err)}") from None
    except ImportError as err:  # a sub-model whose optional package is missing (e.g. timm)
        raise SourceError(f"{source.spec}: this config needs a package that is not installed: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


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
    try:
        with torch.device(device), _default_dtype(torch_dtype(dtype)), _pinned_dtype(config, torch_dtype(dtype)):
            model = model_class(source.model_type)(config)
    except torch.OutOfMemoryError:
        raise SourceError(f"{source.name}: not enough {device} memory for its weights") from None
    except (ValueError, TypeError, RuntimeError, ArithmeticError, IndexError, KeyError, AttributeError) as err:
        raise SourceError(f"{source.spec}: transformers could not build this config: {_first_line(err)}") from None
    except ImportError as err:
        raise SourceError(f"{source.spec}: this config needs a package that is not installed: {_first_line(err)}") from None
    return model


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


def load_weights(source: Source, *, dtype: Dtype, device: str = "cpu") -> torch.nn.Module:
    """The checkpoint's model with its weights: safetensors first, .bin only with weights_only=True (a pickle
    holding anything but tensors is refused, never executed), and never code shipped with the checkpoint."""
    import pickle

    import torch

    if not source.weights:
        raise SourceError(f"{source.spec}: no weight files (*.safetensors or *.bin) next to its config.json")
    check_file_room(source, device)
    cls = model_class(source.model_type)
    directory = source.weights[0].parent
    try:
        model, info = cls.from_pretrained(
            directory, dtype=torch_dtype(dtype), use_safetensors=source.weight_format == "safetensors",
            weights_only=True, trust_remote_code=False, output_loading_info=True, local_files_only=True,
            # device_map needs the accelerate package; CPU is from_pretrained's default anyway
            **({} if device == "cpu" else {"device_map": device}),
        )
    except torch.OutOfMemoryError:
        raise SourceError(f"{source.name}: not enough {device} memory for its weights") from None
    except pickle.UnpicklingError:
        raise SourceError(f"{directory}: refused to load {source.weights[0].name}: it holds objects other than "
                          "tensors, which could run code; convert the checkpoint to safetensors") from None
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise SourceError(f"{directory}: the weights could not be loaded: {_first_line(err)}") from None
    missing = sorted(info.get("missing_keys", []))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise SourceError(f"{directory}: the checkpoint lacks {len(missing)} weight(s): {shown}")
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
    return index.with_dtype(TORCH_DTYPE_NAMES[dtype])
