"""A step's stages, kept for the next look at the same step.

An event of the dashboard estimates a plan's step (`analytic.estimate`), counts its FLOPs
(`compute.flops.step_flops`) and walks it again for the GPU-count figures: each built the same stages
from the same index, mask, workload, input hooks and adapters. The built step (`analytic._Step`: the
stages, who owns each gradient, the inputs and workspaces) depends on nothing else, so it is kept per
index (`freezelab.index_memo`: it goes when the index does), the most recent `PER_INDEX`. A kept step
is never modified (its FSDP2 gradient map is filled once, the same by every caller).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index

PER_INDEX = 64   # built steps kept per index: each holds its stages (the programs are shared)

_T = TypeVar("_T")


@per_index
def _kept(index: ModelIndex) -> Kept:
    return Kept(PER_INDEX)


def built(index: ModelIndex, key: Hashable, build: Callable[[], _T]) -> _T:
    """The step of `key` (mask, workload, input hooks, adapters), built once."""
    return _kept(index).get(key, build)


def forget(index: ModelIndex) -> None:
    """Drop `index`'s kept steps (a benchmark timing a new step)."""
    _kept(index).clear()
