"""The process-wide cache of loaded models: (Source, ModelIndex) pairs, shared by every session.

Cached indexes are never mutated; a dashboard session holds only the model's spec string
and asks the cache for the index on every event.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from freezelab.index import ModelIndex
from freezelab.models import index_of
from freezelab.sources import Source
from freezelab.sources import resolve as resolve_source

INDEX_DTYPE = "bf16"       # the dtype shown in the tree; estimates use the workload's dtype
CACHE_CAPACITY = 12        # indexes kept process-wide (a 72B index is a few MB in memory)
CACHE_BYTES = 256 * 2**20  # and at most this much of them, by index_bytes()
INDEX_MEMORY_FACTOR = 3    # measured (tracemalloc): a loaded index takes ~3x its JSON size


def index_bytes(index: ModelIndex) -> int:
    """Estimated memory of a loaded index: its serialised size times the measured ratio of Python
    objects to JSON (about 3 for the shipped indexes, tiny to 72B)."""
    return INDEX_MEMORY_FACTOR * len(json.dumps(index.to_dict(), separators=(",", ":")))


@dataclass(frozen=True)
class Loaded:
    source: Source
    index: ModelIndex
    nbytes: int = 0     # estimated memory of the index, measured once at load


class ModelCache:
    """A thread-safe LRU of loaded models keyed by (spec, dtype), bounded by entries and by bytes.
    The entry just loaded always stays, however large: it is the one being served."""

    def __init__(self, capacity: int = CACHE_CAPACITY, max_bytes: int = CACHE_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: str, dtype: str = INDEX_DTYPE, *, fresh: bool = False, **resolve_kwargs: Any) -> Loaded:
        """The model of `spec`; `fresh` re-reads its config (the Load button), and keeps the cached
        entry when nothing it was built from changed: the same index object, so what was derived from
        it (freezelab.index_memo: kept estimates, layer stages, replays) stays for the next session."""
        key = (spec.strip(), dtype)
        with self._lock:
            if not fresh and key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        source = resolve_source(key[0], **resolve_kwargs)  # outside the lock: may take seconds
        with self._lock:
            old = self._items.get(key)
            if old is not None and _same(old.source, source):
                self._items.move_to_end(key)
                return old
        index = index_of(source, dtype=dtype)
        loaded = Loaded(source, index, index_bytes(index))
        with self._lock:
            self._items[key] = loaded
            self._items.move_to_end(key)
            self._evict()
        return loaded

    def _evict(self) -> None:
        while len(self._items) > 1 and (len(self._items) > self.capacity or self._bytes() > self.max_bytes):
            self._items.popitem(last=False)

    def _bytes(self) -> int:
        return sum(item.nbytes for item in self._items.values())

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes()

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _same(old: Source, new: Source) -> bool:
    """Was `new` read from what `old` was: the same spec, files, config and processor settings."""
    return (old == new and old.config == new.config and old.processor == new.processor
            and old.weight_map == new.weight_map)
