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

from bisect import bisect_left, insort
from freezelab.memory.cuda_facts import (
    BLOCK,
    LARGE_BUFFER,
    MIN_LARGE_ALLOC,
    ROUND_LARGE,
    SMALL_BUFFER,
    SMALL_SIZE,
)


class Block:
    """A block of a segment: allocated or free, linked to its neighbours in the segment."""

    __slots__ = ("addr", "size", "seg", "small", "free", "prev", "next", "shares")

    def __init__(self, addr: int, size: int, seg: int, small: bool, free: bool = True,
                 prev: Block | None = None, next: Block | None = None) -> None:
        self.addr, self.size, self.seg, self.small = addr, size, seg, small
        self.free, self.prev, self.next = free, prev, next
        self.shares = 0   # owners beyond the first, for a replay that hands one block to several tensors


class Pool:
    """The free blocks of one pool, best fit first: the smallest that fits, then the lowest address.
    Free blocks are kept by size (the sizes sorted, each size's addresses sorted): many free blocks
    share a few sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []                  # the distinct sizes of free blocks, sorted
        self.by_size: dict[int, list[int]] = {}     # size -> addresses of free blocks of that size, sorted
        self.blocks: dict[int, Block] = {}

    def add(self, b: Block) -> None:
        _add(self, b)

    def remove(self, b: Block) -> None:
        _remove(self, b)

    def best_fit(self, size: int) -> Block | None:
        i = bisect_left(self.sizes, size)
        if i == len(self.sizes):
            return None
        return self.blocks[self.by_size[self.sizes[i]][0]]


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
        self.small_pool, self.large_pool = Pool(), Pool()
        self.reserved = 0
        self.allocated = 0
        self.segments = 0
        self._next_addr = 0

    @property
    def pools(self) -> dict[bool, Pool]:
        return {True: self.small_pool, False: self.large_pool}

    def malloc(self, size: int) -> Block:
        """The block for a request of `size` bytes (rounded already): the best fit, split when its
        remainder is usable (`should_split`), or a new segment. Written out (no Pool.best_fit / remove
        calls): the replays call this tens of thousands of times per estimate."""
        small = size <= SMALL_SIZE
        pool = self.small_pool if small else self.large_pool
        sizes = pool.sizes
        i = bisect_left(sizes, size)
        if i == len(sizes):
            b = self._new_segment(size, small)
        else:  # best fit: the smallest size that fits, its lowest address
            fit = sizes[i]
            addrs = pool.by_size[fit]
            addr = addrs.pop(0)
            if not addrs:
                del pool.by_size[fit]
                del sizes[i]
            b = pool.blocks.pop(addr)
        rest = b.size - size
        if rest >= BLOCK if small else rest > SMALL_SIZE:  # should_split: the remainder goes back to the pool
            nxt = b.next
            r = Block(b.addr + size, rest, b.seg, small, True, b, nxt)
            if nxt is not None:
                nxt.prev = r
            b.next, b.size = r, size
            _add(pool, r)
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

    def release(self, b: Block) -> None:
        """Free `b` and merge it with free neighbours of its segment."""
        self.allocated -= b.size
        pool = self.small_pool if b.small else self.large_pool
        b.free = True
        nb = b.prev
        if nb is not None and nb.free:
            _remove(pool, nb)
            b.addr, b.size, b.prev = nb.addr, nb.size + b.size, nb.prev
            if nb.prev is not None:
                nb.prev.next = b
        nb = b.next
        if nb is not None and nb.free:
            _remove(pool, nb)
            b.size, b.next = b.size + nb.size, nb.next
            if nb.next is not None:
                nb.next.prev = b
        _add(pool, b)


def _add(pool: Pool, b: Block) -> None:
    """Pool.add, as a function (no method lookup on the replays' hot path)."""
    addrs = pool.by_size.get(b.size)
    if addrs is None:
        pool.by_size[b.size] = [b.addr]
        insort(pool.sizes, b.size)
    else:
        insort(addrs, b.addr)
    pool.blocks[b.addr] = b


def _remove(pool: Pool, b: Block) -> None:
    """Pool.remove, likewise."""
    addrs = pool.by_size[b.size]
    if len(addrs) == 1:
        del pool.by_size[b.size]
        sizes = pool.sizes
        del sizes[bisect_left(sizes, b.size)]
    else:
        del addrs[bisect_left(addrs, b.addr)]
    del pool.blocks[b.addr]
