"""The ledger of a simulated step replayed through the caching allocator
(`freezelab.memory.caching_allocator`), for `max_memory_reserved` and the block sizes behind
`max_memory_allocated`: `booked`, the block each allocation got, includes the
remainders of up to 1 MiB that a large block keeps when it is not split.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

from freezelab.memory.caching_allocator import Block, CachingAllocator
from freezelab.memory.fake.ledger import Entry


@dataclass
class AllocatorReplay:
    reserved_peak: int = 0          # max over the replay of cudaMalloc'd bytes
    allocated_peak: int = 0         # max of allocated block bytes (includes unsplit remainders)
    allocated_peak_window: int = 0  # same, over the ticks >= `since`
    peak_tick: int = 0              # ledger tick of that peak
    reserved_at_window_peak: int = 0
    segments: int = 0
    booked: dict[int, int] = field(default_factory=dict)  # id(entry) -> block bytes it was given

def _events(entries: Iterable[Entry]) -> list[tuple[int, bool, Entry]]:
    """(tick, is_allocation, entry) in tick order (one event per tick: ticks are unique)."""
    events: list[tuple[int, bool, Entry]] = []
    for e in entries:
        if not e.nbytes:
            continue
        events.append((e.t0, True, e))
        if e.t1 is not None:
            events.append((e.t1, False, e))
    events.sort(key=operator.itemgetter(0))
    return events

def replay_caching_allocator(entries: Iterable[Entry], since: int = 0) -> AllocatorReplay:
    """Replay allocations / frees (in ledger-tick order) through the caching allocator's policy;
    the window peak is over ticks >= `since`."""
    alloc = CachingAllocator()
    where: dict[int, Block] = {}
    res = AllocatorReplay()
    for t, is_alloc, e in _events(entries):
        if not is_alloc:
            b = where.pop(id(e), None)
            if b is not None:
                alloc.release(b)
            continue
        b = where[id(e)] = alloc.malloc(e.nbytes)
        res.booked[id(e)] = b.size
        res.reserved_peak = max(res.reserved_peak, alloc.reserved)
        res.allocated_peak = max(res.allocated_peak, alloc.allocated)
        if t >= since and alloc.allocated > res.allocated_peak_window:
            res.allocated_peak_window = alloc.allocated
            res.peak_tick = t
            res.reserved_at_window_peak = alloc.reserved
    res.segments = alloc.segments
    return res
