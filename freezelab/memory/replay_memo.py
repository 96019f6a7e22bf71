"""The allocator replay's figures of the analytic estimate, kept per step.

The replay (`freezelab.memory.allocations`) is the larger part of an analytic estimate's time,
and a dashboard event, a refused edit, the Verify tab and the sanity step's gate all estimate
the same step again. Its figures depend only on the index, the trainable mask, the workload,
the adapters, the input hooks and whether the workspaces are ready, so they are kept under that
key: per index object, held weakly like `freezelab.index_memo` (an index dropped by the model
cache takes its figures with it), the most recent `PER_INDEX` steps of each.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

from freezelab.index import ModelIndex
from freezelab.memory.allocations import AllocatorFigures

PER_INDEX = 64   # steps kept per index (a figure is two integers)

_memo: dict[int, tuple[weakref.ref[ModelIndex], OrderedDict[Hashable, AllocatorFigures]]] = {}
_lock = threading.RLock()


def replayed(index: ModelIndex, key: Hashable, replay: Callable[[], AllocatorFigures]) -> AllocatorFigures:
    """`replay()`'s figures for `index` and `key` (the step's mask, workload, adapters, hooks and workspaces),
    computed once."""
    ident = id(index)
    with _lock:
        held = _memo.get(ident)
        if held is not None and held[0]() is index and key in held[1]:
            held[1].move_to_end(key)
            return held[1][key]
    figures = replay()

    def drop(ref: weakref.ref[ModelIndex], ident: int = ident) -> None:
        with _lock:
            if ident in _memo and _memo[ident][0] is ref:
                del _memo[ident]

    with _lock:
        held = _memo.get(ident)
        if held is None or held[0]() is not index:
            held = _memo[ident] = (weakref.ref(index, drop), OrderedDict())
        held[1][key] = figures
        while len(held[1]) > PER_INDEX:
            held[1].popitem(last=False)
    return figures


def clear() -> None:
    """Forget every kept figure (a benchmark timing the replay itself)."""
    with _lock:
        _memo.clear()
