"""The caching-allocator replay on a short hand-written list of allocations and frees.

Expected numbers follow c10/cuda/CUDACachingAllocator.cpp's policy by hand: the
small pool hands out 2 MiB segments, the large pool 20 MiB segments below
10 MiB and exact 2 MiB-rounded segments above; a block is split only when the
rest is usable (>= 512 B small, > 1 MiB large), and a freed block merges back.
"""

from __future__ import annotations

import pytest

from freezelab.memory.caching_allocator import segment_size, should_split
from freezelab.memory.fake.allocator import replay_caching_allocator
from freezelab.memory.fake.ledger import Entry, Label
from freezelab.memory.result import Category, Phase

KiB, MiB = 2**10, 2**20


def entry(nbytes: int, t0: int, t1: int | None = None) -> Entry:
    e = Entry(nbytes, Category.ACTIVATIONS, Label.OTHER, t0, Phase.FORWARD)
    e.t1 = t1
    return e


@pytest.mark.parametrize("size,segment", [
    (512, 2 * MiB), (1 * MiB, 2 * MiB),              # small pool
    (1 * MiB + 512, 20 * MiB), (10 * MiB - 512, 20 * MiB),  # large, under kMinLargeAlloc
    (10 * MiB, 10 * MiB), (11 * MiB + 512, 12 * MiB), (33 * MiB, 34 * MiB),  # rounded up to 2 MiB
])
def test_segment_sizes(size: int, segment: int) -> None:
    assert segment_size(size) == segment


def test_split_thresholds() -> None:
    assert should_split(True, 512) and not should_split(True, 0)
    assert should_split(False, 1 * MiB + 512) and not should_split(False, 1 * MiB)


def test_replay_of_a_hand_written_log() -> None:
    log = {
        "a": entry(1 * KiB, 1, 4),        # small pool: one 2 MiB segment, split
        "b": entry(512, 2),
        "c": entry(2 * KiB, 3),
        "d": entry(1 * KiB, 5),           # reuses a's freed block exactly
        "e": entry(1536 * KiB, 6, 7),     # large: a 20 MiB segment, split; freed: merges back to 20 MiB
        "f": entry(19968 * KiB, 8),       # takes the whole 20 MiB block (512 KiB rest is not split)
        "g": entry(12 * MiB, 9),          # a new exact 12 MiB segment
        "h": entry(11 * MiB + 512, 10),   # a new 12 MiB segment, handed out whole
        "empty": entry(0, 11),            # nothing booked
    }
    replay = replay_caching_allocator(log.values(), since=8)
    assert {k: replay.booked.get(id(e)) for k, e in log.items()} == {
        "a": 1 * KiB, "b": 512, "c": 2 * KiB, "d": 1 * KiB, "e": 1536 * KiB,
        "f": 20 * MiB, "g": 12 * MiB, "h": 12 * MiB, "empty": None}
    assert replay.segments == 4
    assert replay.reserved_peak == (2 + 20 + 12 + 12) * MiB
    small = 1 * KiB + 512 + 2 * KiB
    assert replay.allocated_peak == replay.allocated_peak_window == small + 44 * MiB
    assert replay.peak_tick == 10
    assert replay.reserved_at_window_peak == 46 * MiB


def test_window_peak_ignores_the_ticks_before_it() -> None:
    first = entry(4 * MiB, 1, 2)      # 20 MiB segment, freed
    second = entry(1 * MiB, 3)        # small pool: a 2 MiB segment
    replay = replay_caching_allocator([second, first], since=3)  # order of the list does not matter
    assert replay.allocated_peak == 4 * MiB
    assert replay.allocated_peak_window == 1 * MiB and replay.peak_tick == 3
    assert replay.reserved_peak == replay.reserved_at_window_peak == 22 * MiB


def test_freed_neighbours_merge_both_ways() -> None:
    # three large blocks carved from one 20 MiB segment; freeing the outer two then the middle one
    # leaves one free 20 MiB block, which a 19 MiB request then gets without a new segment
    x, y, z = entry(3 * MiB, 1, 5), entry(3 * MiB, 2, 6), entry(3 * MiB, 3, 4)
    big = entry(19 * MiB, 7)
    replay = replay_caching_allocator([x, y, z, big])
    assert replay.segments == 1 and replay.reserved_peak == 20 * MiB
    assert replay.booked[id(big)] == 20 * MiB  # 1 MiB rest: not split, counted whole
