"""The index's tensors grouped the way the estimator walks them, computed once per index.

A plan toggle changes only the mask, so these lookups (parameters by module,
by layer, sizes per dtype) are cached per ModelIndex object (held weakly: a
dropped index takes its entry with it) and every estimate after the first
skips the scans over all parameters.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import lru_cache

from freezelab.index import ModelIndex
from freezelab.memory.caching_allocator import CachingAllocator
from freezelab.memory.cuda_facts import rounded


@dataclass
class Structure:
    index: weakref.ReferenceType[ModelIndex]
    relative: dict[str, dict[str, int]] = field(default_factory=dict)   # module path -> {relative name: param}
    layers: dict[str, list[dict[str, int]]] = field(default_factory=dict)  # tower -> per layer {relative name: param}
    sizes: dict[int, tuple[int, int, int]] = field(default_factory=dict)   # elem -> (all, largest layer, outside layers)
    booked: dict[int, int] = field(default_factory=dict)   # elem -> the weights as the allocator books them at load


_CACHE: dict[int, Structure] = {}


def of(index: ModelIndex) -> Structure:
    key = id(index)
    entry = _CACHE.get(key)
    if entry is None or entry.index() is not index:
        entry = Structure(weakref.ref(index, lambda _ref, k=key: _CACHE.pop(k, None)))
        _CACHE[key] = entry
    return entry


def relative(index: ModelIndex, prefix: str) -> dict[str, int]:
    """Parameters under a module path, keyed by their name relative to it (tied aliases included)."""
    s = of(index)
    if prefix not in s.relative:
        out: dict[str, int] = {}
        start = prefix + "."
        for i, p in enumerate(index.params):
            for name in p.names:
                if name.startswith(start):
                    out.setdefault(name[len(start):], i)
        s.relative[prefix] = out
    return s.relative[prefix]


def layer_params(index: ModelIndex, tower: str) -> list[dict[str, int]]:
    """Per layer of a tower ("vision" / "llm"), its parameters keyed by name relative to the layer."""
    s = of(index)
    if tower not in s.layers:
        paths = index.layers.get(tower, [])
        by_layer: list[dict[str, int]] = [{} for _ in paths]
        component = "vision" if tower == "vision" else "llm"
        for i, p in enumerate(index.params):
            if p.component == component and p.layer is not None and p.layer < len(paths):
                by_layer[p.layer][p.name[len(paths[p.layer]) + 1:]] = i
        s.layers[tower] = by_layer
    return s.layers[tower]


def sizes(index: ModelIndex, elem: int) -> tuple[int, int, int]:
    """(all weights, the largest transformer layer, everything outside the layer stacks) in bytes."""
    s = of(index)
    if elem not in s.sizes:
        per_layer: dict[tuple[str, int], int] = {}
        total = outside = 0
        for p in index.params:
            size = _bytes(p.numel, elem)
            total += size
            if p.layer is None:
                outside += size
            else:
                key = (p.component, p.layer)
                per_layer[key] = per_layer.get(key, 0) + size
        s.sizes[elem] = (total, max(per_layer.values(), default=0), outside)
    return s.sizes[elem]


def booked_weights(index: ModelIndex, elem: int, buffers: list[int]) -> int:
    """The parameters, then the `buffers`, as the caching allocator books them when the model is loaded:
    one request after the other into fresh segments, a large block keeping a remainder too small to split
    off (up to 1 MiB, `caching_allocator`), which `max_memory_allocated` counts whole."""
    s = of(index)
    if elem not in s.booked:
        alloc = CachingAllocator()
        for size in (*(_bytes(p.numel, elem) for p in index.params), *buffers):
            alloc.malloc(size)
        s.booked[elem] = alloc.allocated
    return s.booked[elem]


@lru_cache(maxsize=65536)
def _bytes(numel: int, elem: int) -> int:
    return rounded(numel * elem)


def find(params: dict[str, int], *suffixes: str) -> int | None:
    """The parameter whose relative name ends with one of `suffixes` (architectures differ in nesting)."""
    for suffix in suffixes:
        if suffix in params:
            return params[suffix]
        for name, i in params.items():
            if name.endswith("." + suffix):
                return i
    return None


def shape_of(index: ModelIndex, i: int | None, dim: int, default: int) -> int:
    return index.params[i].shape[dim] if i is not None else default


def text_hidden(index: ModelIndex) -> int:
    embed = index.module_by_path[index.roots["embeddings"][0]]
    return index.params[embed.own[0]].shape[1]


def lm_head_param(index: ModelIndex) -> int | None:
    for path in index.roots.get("lm_head", []):
        module = index.module_by_path.get(path)
        if module and module.own:
            return module.own[0]
    return None
