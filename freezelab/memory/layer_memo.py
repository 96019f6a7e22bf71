"""Layer stages kept across estimates of one index.

A decoder or vision layer's stage (freezelab.memory.stages) depends only on the layer's recipe and
shapes, which of its own parameters train, whether its input requires grad, the numerics, gradient
checkpointing, the KV cache and the adapters on its weights: not on the rest of the plan. A dashboard
event (a tree checkbox, a preset, a workload edit, a point of the memory curve) builds every stage of
a step again, with a new mask but mostly the same layers, so layer stages are kept per index
(`freezelab.index_memo`: they go when the index does) under that key and the layer's own parameter
indices (its program names them: the allocator replay looks their gradients up by them), the most
recent `PER_INDEX`. A kept stage is never modified: callers get a copy (`stages._layer_stage`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index

if TYPE_CHECKING:
    from freezelab.memory.stages import Flow, Stage

PER_INDEX = 1024   # layer stages kept per index: a few per (workload, flags) pair, each a few kilobytes


@per_index
def _kept(index: ModelIndex) -> Kept:
    return Kept(PER_INDEX)


def layer_key(f: Flow, recipe: Callable[..., str], component: str, p: dict[str, int], flow_in: bool,
              shape: tuple[Any, ...]) -> tuple[Hashable, ...]:
    """What a layer's stage depends on, its parameter indices aside. `recipe` must be a function or a partial kept for good (a new
    partial per build would never be found again); `shape` holds the recipe's other arguments."""
    mask = f.mask
    return (recipe, component, flow_in, tuple(p), tuple(mask[i] for i in p.values()), f.spec.key(p),
            f.spec.token(), shape, f.num, f.ckpt, f.cache_values_follow_keys)


def kept_layer(index: ModelIndex, key: Hashable, make: Callable[[], Stage]) -> Stage:
    """The stage kept for `key`, made once."""
    return _kept(index).get(key, make)
