"""Sharded loading: each rank reads only its own rows of every weight from the checkpoint's safetensors
files, so no process ever holds the whole checkpoint (a 72B one included).

The model is already sharded (freezelab.step.shard): every parameter is a DTensor holding its dim-0
shard, rows [rank * ceil(n / world), ...) as FSDP2 splits them (torch.chunk). safetensors' `get_slice`
reads just those rows from the memory-mapped file. Checkpoint names are mapped to the model's with
transformers' own renaming rules for the class (`get_model_conversion_mapping`, `rename_source_key`,
as `from_pretrained` applies them: `language_model.model.layers.0...` -> `model.language_model.layers.0...`).
Only the checked weight files of the Source are opened (see freezelab.sources).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freezelab.errors import SourceError
from freezelab.sources import Source

if TYPE_CHECKING:
    import torch


def checkpoint_names(model: torch.nn.Module, keys: list[str]) -> dict[str, str]:
    """Checkpoint key -> the model's parameter name, for the keys that name one (others: buffers, extras)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    known = {name: True for name, _ in model.named_parameters(remove_duplicate=False)}
    prefix = getattr(model, "base_model_prefix", None)
    out: dict[str, str] = {}
    for key in keys:
        name, converted = rename_source_key(key, renamings, converters, prefix, known)
        if name not in known and key in known:
            name, converted = key, None
        if converted is not None:
            raise SourceError(f"{key}: this checkpoint stores the weight in a layout transformers converts while "
                              "loading (fused or split tensors); sharded loading reads plain tensors only")
        if name in known:
            out[key] = name
    return out


def _rows(p: Any) -> tuple[int, int]:
    """(first row, row count) of this rank's dim-0 shard of DTensor `p`, checked against its local tensor."""
    size, rank = p.device_mesh.size(), p.device_mesh.get_local_rank()
    total = p.shape[0]
    chunk = -(-total // size)
    first = min(rank * chunk, total)
    count = max(0, min(chunk, total - first))
    if tuple(p.to_local().shape) != (count, *p.shape[1:]):
        raise SourceError(f"unexpected shard shape {tuple(p.to_local().shape)} for {tuple(p.shape)} on rank {rank}")
    return first, count


def _copy(p: Any, view: Any, dtype: torch.dtype) -> None:
    import torch
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        if isinstance(p, DTensor):
            first, count = _rows(p)
            if count:
                p.to_local().copy_(view[first:first + count].to(dtype))
        else:
            p.copy_(view[:].to(dtype))


Reading = dict[str, dict[str, str]]  # weight file -> {checkpoint key: parameter name}


def plan_reading(model: torch.nn.Module, source: Source) -> Reading:
    """Which checkpoint key fills which parameter, per weight file (headers only). Called before the model
    is sharded: transformers finds a class's renaming rules by its class, which FSDP2 replaces."""
    from safetensors import safe_open

    if source.weight_format != "safetensors":
        raise SourceError(f"{source.name}: sharded loading reads safetensors files; this checkpoint has "
                          f"{source.weight_format or 'no'} weights (convert it to safetensors)")
    out: Reading = {}
    for path in source.weights:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out[str(path)] = checkpoint_names(model, list(f.keys()))
    return out


def load_shards(model: torch.nn.Module, source: Source, reading: Reading, dtype: torch.dtype) -> None:
    """Fill every parameter's local shard from the checkpoint; a missing or misshapen weight is an error."""
    from safetensors import safe_open

    by_name = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[int] = set()
    for path, names in reading.items():
        with safe_open(path, framework="pt", device="cpu") as f:
            for key, name in names.items():
                p, view = by_name[name], f.get_slice(key)
                if list(view.get_shape()) != list(p.shape):
                    raise SourceError(f"{source.name}: {key} has shape {tuple(view.get_shape())} in the checkpoint "
                                      f"but {name} is {tuple(p.shape)} in the model")
                _copy(p, view, dtype)
                loaded.add(id(p))
    missing = sorted({name for name, p in by_name.items() if id(p) not in loaded})
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise SourceError(f"{source.spec}: the checkpoint lacks {len(missing)} weight(s): {shown}")
