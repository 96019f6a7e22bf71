"""Data derived from a model index, memoised per index object.

Indexes are never mutated once loaded, so anything computed from one (the tree's static
rows, the chart layout, a selector's matches) can be kept as long as the index lives, and
no longer: the memo holds the index weakly.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

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


class Kept:
    """Results derived from one index (an estimate, a chart, the tree's rows for a plan), at most
    `size`, the least recently used dropped first. Each must be a pure function of the index and the
    key, never modified once made, so it can be shared between sessions. Hold one per index
    (`per_index`), so that it goes when the index does."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], _T]) -> _T:
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        value = make()
        with self._lock:
            self._kept[key] = value
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._kept)
