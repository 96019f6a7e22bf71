"""Reading the ledger's log after the run: what was alive at a tick, peaks per phase and
peaks under per-category scalings (sharding applied on one rank's log).

`entries` are `ledger.Entry` objects (t0 = allocation tick, t1 = free tick or
None); `marks` are the ledger's (tick, phase) marks, each covering the events
after its tick. `sizes` optionally maps id(entry) to the block the caching
allocator handed it (`allocator.replay_caching_allocator`); otherwise an
entry counts its 512-rounded request.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterable, Iterator

from freezelab.memory.fake.ledger import Entry, Label
from freezelab.memory.result import Category, Phase

Sizes = dict[int, int] | None
Marks = list[tuple[int, Phase]]


def size_of(e: Entry, sizes: Sizes) -> int:
    if not e.nbytes:
        return 0
    return sizes.get(id(e), e.nbytes) if sizes else e.nbytes


def alive_at(entries: Iterable[Entry], t: int) -> Iterator[Entry]:
    for e in entries:
        if e.t0 <= t and (e.t1 is None or e.t1 > t):
            yield e


def breakdown_at(entries: Iterable[Entry], t: int, sizes: Sizes = None
                 ) -> tuple[dict[Category, int], dict[Label, int]]:
    """Bytes per category, and per label for activations, of what is alive at tick `t`."""
    cats: dict[Category, int] = {}
    comps: dict[Label, int] = {}
    for e in alive_at(entries, t):
        n = size_of(e, sizes)
        if not n:
            continue
        cats[e.cat] = cats.get(e.cat, 0) + n
        if e.cat == Category.ACTIVATIONS:
            comps[e.comp] = comps.get(e.comp, 0) + n
    return cats, comps


def count_alive(entries: Iterable[Entry], t: int, label: Label) -> int:
    """How many allocations charged to `label` are alive at tick `t`."""
    return sum(1 for e in alive_at(entries, t) if e.comp == label and e.nbytes)


def phase_at(marks: Marks, t: int) -> Phase:
    i = bisect.bisect_left([m[0] for m in marks], t) - 1
    return marks[max(i, 0)][1]


def _events(entries: Iterable[Entry], sizes: Sizes) -> list[tuple[int, int]]:
    """(tick, +bytes) at each allocation and (tick, -bytes) at its release, in tick order."""
    events: list[tuple[int, int]] = []
    for e in entries:
        n = size_of(e, sizes)
        if n:
            events.append((e.t0, n))
            if e.t1 is not None:
                events.append((e.t1, -n))
    events.sort()
    return events


def window_peak(entries: Iterable[Entry], lo: int, hi: int, sizes: Sizes = None) -> int:
    """Highest total over ticks in [lo, hi)."""
    cur = best = 0
    for t, d in _events(entries, sizes):
        if t >= hi:
            break
        cur += d
        if t >= lo:
            best = max(best, cur)
    return best


def phase_peaks(entries: Iterable[Entry], marks: Marks, since: int, sizes: Sizes = None
                ) -> dict[Phase, tuple[int, int]]:
    """Highest total in each phase over ticks >= `since`: {phase: (bytes, tick)}."""
    ticks = [m[0] for m in marks]
    out: dict[Phase, tuple[int, int]] = {}
    cur = 0
    for t, d in _events(entries, sizes):
        cur += d
        if t >= since:
            ph = marks[max(bisect.bisect_left(ticks, t) - 1, 0)][1]
            if cur > out.get(ph, (-1, 0))[0]:
                out[ph] = (cur, t)
    return out


Extra = Callable[[Phase], dict[Category, float]]


def scaled_peak(entries: Iterable[Entry], marks: Marks, scale: dict[Category, float], since: int,
                extra: Extra | None = None, sizes: Sizes = None) -> tuple[int, int]:
    """Peak over ticks >= `since` of sum(scale[cat] * bytes(cat)) + sum(extra(phase)); returns (bytes, tick).
    Events of one tick are applied together before the total is read."""
    events = _category_events(entries, sizes)
    mi, phase = 0, marks[0][1]
    cur = 0.0
    best, best_t = -1.0, since
    i, n = 0, len(events)
    while i < n:
        t = events[i][0]
        while i < n and events[i][0] == t:
            _, d, c = events[i]
            cur += scale.get(c, 1.0) * d
            i += 1
        while mi + 1 < len(marks) and marks[mi + 1][0] < t:
            mi += 1
            phase = marks[mi][1]
        if t >= since:
            v = cur + (sum(extra(phase).values()) if extra else 0.0)
            if v > best:
                best, best_t = v, t
    return int(best), best_t


def _category_events(entries: Iterable[Entry], sizes: Sizes) -> list[tuple[int, int, Category]]:
    events: list[tuple[int, int, Category]] = []
    for e in entries:
        n = size_of(e, sizes)
        if not n:
            continue
        events.append((e.t0, n, e.cat))
        if e.t1 is not None:
            events.append((e.t1, -n, e.cat))
    events.sort(key=operator.itemgetter(0))
    return events
