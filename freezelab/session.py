"""Per-session state of the dashboard and the process-wide model cache.

A `Session` is an immutable value: every event returns a new one, so two
browser sessions can never share or mutate each other's plan or workload, and
a handler that fails simply leaves the previous value in place. Models are
cached process-wide as (Source, ModelIndex) pairs; cached indexes are never
mutated, and a session holds only the model's spec string, not the index.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from freezelab.errors import SelectorError
from freezelab.index import ModelIndex
from freezelab.models import index_of
from freezelab.plans import Plan, Rule
from freezelab.selectors import select
from freezelab.sources import Source
from freezelab.sources import resolve as resolve_source
from freezelab.workload import Workload

DEFAULT_MODEL = "tiny"
INDEX_DTYPE = "bf16"       # the dtype shown in the tree; estimates use the workload's dtype
MAX_HISTORY = 100          # undo steps kept per session
CACHE_CAPACITY = 12        # indexes kept process-wide (a 72B index is a few MB in memory)
CACHE_BYTES = 256 * 2**20  # and at most this much of them, by index_bytes()
INDEX_MEMORY_FACTOR = 3    # measured (tracemalloc): a loaded index takes ~3x its JSON size
MAX_HIT_INDICES = 200_000  # parameter indices memoised per index by hits() (~75 bytes each)
MAX_HIT_SELECTORS = 4096
MAX_SIMPLIFY = 64          # rules a plan may have for append_rule to look for redundant ones


@dataclass(frozen=True)
class TreeOptions:
    query: str = ""            # substring filter on module paths and class names
    depth: int | None = None   # deepest module level shown; None: all


@dataclass(frozen=True)
class Session:
    model: str = DEFAULT_MODEL          # the MODEL spec the index was loaded from
    weights: bool = False               # the sanity step loads the checkpoint's weights
    plan: Plan = field(default_factory=Plan)
    history: tuple[Plan, ...] = ()      # undo stack, newest last
    workload: Workload = field(default_factory=Workload)
    tree: TreeOptions = field(default_factory=TreeOptions)

    def with_plan(self, plan: Plan) -> Session:
        """The session with a new plan; the old one goes on the undo stack (if it differs)."""
        if plan == self.plan:
            return self
        return replace(self, plan=plan, history=(*self.history, self.plan)[-MAX_HISTORY:])

    def undo(self) -> Session:
        if not self.history:
            return self
        return replace(self, plan=self.history[-1], history=self.history[:-1])

    @property
    def can_undo(self) -> bool:
        return bool(self.history)


# -- rules -------------------------------------------------------------------------

def append_rule(plan: Plan, index: ModelIndex, action: str, selector: str) -> Plan:
    """`plan` plus one rule, kept short: an earlier rule whose every parameter is matched again by
    later rules is dropped (last match wins, so it can no longer decide anything), then every rule
    whose removal leaves the mask unchanged (a rule that changes nothing is not added). The
    resulting mask always equals that of `plan.then(action, selector)`.

    Raises SelectorError when the selector matches nothing."""
    later = set(hits(index, selector))
    kept: list[Rule] = [Rule(action, selector)]
    for old in reversed(plan.rules):
        matched = hits(index, old.selector)
        if not matched <= later:
            kept.append(old)
            later |= matched
    return _without_neutral_rules(Plan(plan.base or plan.effective_base, tuple(reversed(kept)), plan.preset),
                                  index)


def _without_neutral_rules(plan: Plan, index: ModelIndex) -> Plan:
    """Drop, newest first, each rule whose removal does not change the mask."""
    if len(plan.rules) > MAX_SIMPLIFY:  # quadratic: long imported plans are left as written
        return plan
    target = plan_mask(plan, index)
    rules = list(plan.rules)
    for i in range(len(rules) - 1, -1, -1):
        trial = Plan(plan.base, (*rules[:i], *rules[i + 1:]), plan.preset)
        if plan_mask(trial, index) == target:
            del rules[i]
    return Plan(plan.base, tuple(rules), plan.preset)


def module_selector(index: ModelIndex, path: str) -> str:
    """A selector for exactly the parameters under module `path`: the path itself as a
    segment glob (readable in the rule list), or an anchored regex in the rare case the
    glob would also catch a parameter elsewhere."""
    if not isinstance(path, str):
        raise SelectorError(f"a module path must be text, got {type(path).__name__}")
    if path == "":
        return "@all"
    module = index.module_by_path.get(path)
    if module is None:
        raise SelectorError(f"{path!r} is not a module of {index.name}")
    if not module.params:
        raise SelectorError(f"{path!r} has no parameters to train or freeze")
    if hits(index, path) == set(module.params):
        return path
    return f"re:^{re.escape(path)}\\."


# -- model cache -------------------------------------------------------------------

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
        """The model of `spec`; `fresh` re-reads its config (the Load button)."""
        key = (spec.strip(), dtype)
        with self._lock:
            if not fresh and key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        loaded = self._load(key[0], dtype, **resolve_kwargs)  # outside the lock: may take seconds
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

    @staticmethod
    def _load(spec: str, dtype: str, **resolve_kwargs: Any) -> Loaded:
        source = resolve_source(spec, **resolve_kwargs)
        index = index_of(source, dtype=dtype)
        return Loaded(source, index, index_bytes(index))


# -- derived data per index ------------------------------------------------------------

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


class _Hits:
    """Selector -> matched parameter indices for one index: an LRU bounded by the number of indices it
    holds, so a client sending thousands of distinct selectors cannot grow it without limit."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, frozenset[int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, selector: str) -> frozenset[int] | None:
        with self._lock:
            found = self._items.get(selector)
            if found is not None:
                self._items.move_to_end(selector)
            return found

    def put(self, selector: str, found: frozenset[int]) -> None:
        with self._lock:
            if selector in self._items:
                return
            self._items[selector] = found
            self._held += len(found)
            while len(self._items) > 1 and (self._held > MAX_HIT_INDICES or len(self._items) > MAX_HIT_SELECTORS):
                _, old = self._items.popitem(last=False)
                self._held -= len(old)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def held(self) -> int:
        with self._lock:
            return self._held


@per_index
def _hit_cache(index: ModelIndex) -> _Hits:
    return _Hits()


def hits(index: ModelIndex, selector: str) -> frozenset[int]:
    """`select(index, selector)` as a set, memoised per index: toggles re-check every earlier rule."""
    cache = _hit_cache(index)
    found = cache.get(selector)
    if found is None:
        found = frozenset(select(index, selector))
        cache.put(selector, found)
    return found


def plan_mask(plan: Plan, index: ModelIndex) -> list[bool]:
    """The plan's trainable mask (same as plans.resolve(...).mask) from memoised selector hits."""
    mask = [plan.effective_base == "trainable"] * len(index.params)
    for rule in plan.rules:
        on = rule.action == "train"
        for i in hits(index, rule.selector):
            mask[i] = on
    return mask
