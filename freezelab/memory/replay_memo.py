"""The allocator replay's figures of the analytic estimate, kept per step.

The replay (`freezelab.memory.allocations`) is the larger part of an analytic estimate's time,
and a dashboard event, a refused edit, the Verify tab and the sanity step's gate can estimate
the same step again. Its figures depend only on the index, the trainable mask, the workload,
the adapters, the input hooks and whether the workspaces are ready, so they are kept under that
key, per index (`freezelab.index_memo`: they go when the index does), the most recent
`PER_INDEX` steps of each.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index
from freezelab.memory.allocations import AllocatorFigures

PER_INDEX = 256   # steps kept per index (a figure is two integers), as many as the dashboard keeps estimates


@per_index
def _kept(index: ModelIndex) -> Kept:
    return Kept(PER_INDEX)


def replayed(index: ModelIndex, key: Hashable, replay: Callable[[], AllocatorFigures]) -> AllocatorFigures:
    """`replay()`'s figures for `index` and `key` (the step's mask, workload, adapters, hooks and workspaces),
    computed once."""
    return _kept(index).get(key, replay)


def forget(index: ModelIndex) -> None:
    """Drop `index`'s kept figures (a benchmark timing the replay itself)."""
    _kept(index).clear()
