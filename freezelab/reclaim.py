"""Memory a finished simulation or sanity step leaves in the process, handed back.

Where a server's memory went after simulations and sanity steps (measured in process on tiny,
batch 256 x 64 images: 355 MB before, 475 MB after the run, `python benchmarks/run_memory.py`
prints the same for a launched server):

* torch's fake-tensor dispatch cache (`FakeTensorMode.cache`): a dict on the class, shared by
  every fake mode and never bounded. One simulation adds an entry per distinct op and shape
  (33,000 for that run, about 60 MB), and every new workload adds its own. Keeping it does not
  pay: a warm cache saves no measurable time on a 7B simulation (2.4-2.9 s of CPU either way).
* freed memory that glibc's malloc keeps in its arenas (one per worker thread that ran a step):
  the run's tensors and Python objects are gone, but the process still holds their pages until
  `malloc_trim` returns them.
* reference cycles (autograd graphs, module hooks) waiting for the next full collection.

`reclaim()` clears all three; after it the process is back within a few MB of where it was before
the run (tests/test_hostile_inputs.py and benchmarks/run_memory.py check it). What stays is what
the first run imported (torch and transformers' LLaVA code, about 200 MB, once).

Ordinary requests free what they allocate too, but on the worker thread that served them, whose
glibc arena keeps the pages: `trim_heap_soon()` hands them back shortly after a browser session
closes (once for a class closing its tabs together).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
import threading
import time


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def fake_cache_entries() -> int:
    """Entries in torch's fake-tensor dispatch cache (0 when no fake tensor was ever made)."""
    fake = sys.modules.get("torch._subclasses.fake_tensor")
    return len(fake.FakeTensorMode.cache) if fake is not None else 0


def reclaim() -> None:
    """Clear the fake-tensor dispatch cache, collect reference cycles and return freed heap pages to
    the system. Takes 0.1-0.3 s: call it after a run, not per event."""
    fake = sys.modules.get("torch._subclasses.fake_tensor")
    if fake is not None:
        fake.FakeTensorMode.cache_clear()
    gc.collect()
    trim_heap()


TRIM_DELAY_S = 2.0   # a class closing its tabs together trims once, this long after the first closes
_PENDING: dict[str, threading.Timer] = {}
_PENDING_LOCK = threading.Lock()


def trim_heap() -> None:
    """Hand freed heap pages back to the system: glibc's malloc_trim (each worker thread that served a
    request has an arena of its own and keeps what its requests freed). Milliseconds, no collection."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def trim_heap_soon(delay_s: float = TRIM_DELAY_S) -> bool:
    """`trim_heap()` in `delay_s` on a timer thread, unless one is already due: for when a session
    closes (many close together). True when this call scheduled it."""
    with _PENDING_LOCK:
        if "timer" in _PENDING:
            return False
        timer = threading.Timer(delay_s, _trim_due)
        timer.daemon = True
        _PENDING["timer"] = timer
    timer.start()
    return True


def _trim_due() -> None:
    with _PENDING_LOCK:
        _PENDING.pop("timer", None)
    trim_heap()
