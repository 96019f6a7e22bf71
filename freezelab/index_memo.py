"""Data derived from a model index, memoised per index object.

Indexes are never mutated once loaded, so anything computed from one (the tree's static
rows, the chart layout, a selector's matches) can be kept as long as the index lives, and
no longer: the memo holds the index weakly.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

from freezelab.index import ModelIndex

_T = TypeVar("_T")


def per_index(fn: Callable[[ModelIndex], _T]) -> Callable[[ModelIndex], _T]:
    """Memoise a function of an index by the index object's identity (indexes are never mutated once
    loaded). Entries are held weakly: when the model cache drops an index, what was derived from it
    goes too, so the memo is bounded by the indexes alive."""
    memo: dict[int, tuple[weakref.ref[ModelIndex], _T]] = {}
    lock = threading.RLock()  # the drop callback may run inside a locked section of this thread

    def wrapper(index: ModelIndex) -> _T:
        key = id(index)
        with lock:
            hit = memo.get(key)
            if hit is not None and hit[0]() is index:
                return hit[1]
        value = fn(index)

        def drop(ref: weakref.ref[ModelIndex], key: int = key) -> None:
            with lock:
                if key in memo and memo[key][0] is ref:
                    del memo[key]

        with lock:
            memo[key] = (weakref.ref(index, drop), value)
        return value

    wrapper.__doc__ = fn.__doc__
    return wrapper
