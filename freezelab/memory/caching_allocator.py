"""The CUDA caching allocator's policy, as a model both estimators run (pure Python, no torch).

Modelled after c10/cuda/CUDACachingAllocator.cpp with default settings (no
expandable segments, no max_split_size, one stream), PyTorch 2.11 / 2.13:
requests are rounded to 512 B; up to 1 MiB they come from the small pool
(2 MiB segments), larger ones from the large pool (20 MiB segments below
10 MiB, else rounded up to 2 MiB); the smallest free block that fits is taken
(best fit, then the lowest address) and split when the remainder is >= 512 B
(small pool) or > 1 MiB (large pool); freed blocks merge with free
neighbours; segments are never returned (no empty_cache during a step).

A block that is not split keeps its remainder: `max_memory_allocated` counts
whole blocks, so `allocated` here includes those remainders of up to 1 MiB per
large block. `reserved` is what cudaMalloc handed out: with the CUDA context,
what nvidia-smi shows.

The simulated estimate replays its ledger through it (`fake.allocator`); the
analytic estimate runs the allocation order of its step timeline through it
(`allocation_order`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from freezelab.memory.cuda_facts import (
    BLOCK,
    LARGE_BUFFER,
    MIN_LARGE_ALLOC,
    ROUND_LARGE,
    SMALL_BUFFER,
    SMALL_SIZE,
)


@dataclass(eq=False)
class Block:
    addr: int
    size: int
    seg: int
    small: bool
    free: bool = True
    prev: Block | None = None
    next: Block | None = None


class Pool:
    """The free blocks of one pool, best fit first: the smallest that fits, then the lowest address."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # sorted (size, addr)
        self.blocks: dict[int, Block] = {}

    def add(self, b: Block) -> None:
        bisect.insort(self.free, (b.size, b.addr))
        self.blocks[b.addr] = b

    def remove(self, b: Block) -> None:
        i = bisect.bisect_left(self.free, (b.size, b.addr))
        del self.free[i]
        del self.blocks[b.addr]

    def best_fit(self, size: int) -> Block | None:
        i = bisect.bisect_left(self.free, (size, -1))
        if i == len(self.free):
            return None
        return self.blocks[self.free[i][1]]


def segment_size(size: int) -> int:
    """The cudaMalloc the allocator makes when no cached block fits a request of `size` bytes."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


def should_split(small: bool, remaining: int) -> bool:
    """A block is split when its remainder is usable: >= 512 B (small pool), > 1 MiB (large)."""
    return remaining >= BLOCK if small else remaining > SMALL_SIZE


class CachingAllocator:
    """The pools, the segments cudaMalloc'd so far and what is allocated now."""

    def __init__(self) -> None:
        self.pools = {True: Pool(), False: Pool()}
        self.reserved = 0
        self.allocated = 0
        self.segments = 0
        self._next_addr = 0

    def malloc(self, size: int) -> Block:
        small = size <= SMALL_SIZE
        pool = self.pools[small]
        b = pool.best_fit(size)
        if b is None:
            b = self._new_segment(size, small)
        else:
            pool.remove(b)
        if should_split(small, b.size - size):
            self._split(b, size)
        b.free = False
        self.allocated += b.size
        return b

    def _new_segment(self, size: int, small: bool) -> Block:
        seg = segment_size(size)
        self.segments += 1
        b = Block(self._next_addr, seg, self.segments, small)
        self._next_addr += seg + ROUND_LARGE  # keep segments apart (never adjacent)
        self.reserved += seg
        return b

    def _split(self, b: Block, size: int) -> None:
        rest = Block(b.addr + size, b.size - size, b.seg, b.small, True, b, b.next)
        if b.next is not None:
            b.next.prev = rest
        b.next = rest
        b.size = size
        self.pools[b.small].add(rest)

    def release(self, b: Block) -> None:
        """Free `b` and merge it with free neighbours of its segment."""
        self.allocated -= b.size
        pool = self.pools[b.small]
        b.free = True
        for nb in (b.prev, b.next):
            if nb is not None and nb.free:
                pool.remove(nb)
                _merge(b, nb)
        pool.add(b)


def _merge(b: Block, nb: Block) -> None:
    """Absorb the free neighbour `nb` into `b`."""
    if nb is b.prev:
        b.addr, b.size, b.prev = nb.addr, nb.size + b.size, nb.prev
        if nb.prev is not None:
            nb.prev.next = b
    else:
        b.size, b.next = b.size + nb.size, nb.next
        if nb.next is not None:
            nb.next.prev = b
