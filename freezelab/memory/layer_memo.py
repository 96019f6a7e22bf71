"""Layer stages kept across estimates of one index.

A decoder or vision layer's stage (freezelab.memory.stages) depends only on the layer's recipe and
shapes, which of its own parameters train, whether its input requires grad, the numerics, gradient
checkpointing, the KV cache and the adapters on its weights: not on the rest of the plan. A dashboard
event (a tree checkbox, a preset, a workload edit, a point of the memory curve) builds every stage of
a step again, with a new mask but mostly the same layers, so layer stages are kept per index
(`freezelab.index_memo`: they go when the index does) under that key, the most recent `PER_INDEX`.
Another layer with the same key gets a copy whose program names its own parameters (the allocator
replay looks their gradients up by index). A kept stage is never modified: callers get a copy
(`stages._layer_stage`).
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
    """What a layer's stage depends on. `recipe` must be a function or a partial kept for good (a new
    partial per build would never be found again); `shape` holds the recipe's other arguments."""
    mask = f.mask
    return (recipe, component, flow_in, tuple(p), tuple(mask[i] for i in p.values()), f.spec.key(p),
            f.spec.token(), shape, f.num, f.ckpt, f.cache_values_follow_keys)


def kept_layer(index: ModelIndex, key: Hashable, p: dict[str, int], make: Callable[[], Stage]) -> Stage:
    """The stage kept for `key`, as layer `p`'s (parameter indices by relative name): made once per key
    (`make`, on the tape of the first layer that asked), and for each other layer a copy whose program
    names that layer's parameters (the allocator replay looks their gradients up by index)."""
    kept = _kept(index)
    return kept.get((key, tuple(p.values())), lambda: _as_layer(*kept.get(key, lambda: (make(), p)), p))


def _as_layer(stage: Stage, taped: dict[str, int], p: dict[str, int]) -> Stage:
    if taped is p or list(taped.values()) == list(p.values()):
        return stage
    assert stage.program is not None
    copy = object.__new__(type(stage))
    copy.__dict__.update(stage.__dict__)
    copy.program = stage.program.with_params({taped[name]: i for name, i in p.items()})
    return copy
