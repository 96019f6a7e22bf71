"""Per-session state of the dashboard and the process-wide model cache.

A `Session` is an immutable value: every event returns a new one, so two
browser sessions can never share or mutate each other's plan or workload, and
a handler that fails simply leaves the previous value in place. Models are
cached process-wide as (Source, ModelIndex) pairs; cached indexes are never
mutated, and a session holds only the model's spec string, not the index.
"""

from __future__ import annotations

import re
import threading
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

@dataclass(frozen=True)
class Loaded:
    source: Source
    index: ModelIndex


class ModelCache:
    """A small thread-safe LRU of loaded models, keyed by (spec, dtype)."""

    def __init__(self, capacity: int = CACHE_CAPACITY) -> None:
        self.capacity = capacity
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
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return loaded

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @staticmethod
    def _load(spec: str, dtype: str, **resolve_kwargs: Any) -> Loaded:
        source = resolve_source(spec, **resolve_kwargs)
        return Loaded(source, index_of(source, dtype=dtype))


# -- derived data per index ------------------------------------------------------------

_T = TypeVar("_T")


def per_index(fn: Callable[[ModelIndex], _T]) -> Callable[[ModelIndex], _T]:
    """Memoise a function of an index by the index object's identity (indexes are never
    mutated once loaded). Holds the few most recent indexes, so ids cannot be recycled."""
    memo: OrderedDict[int, tuple[ModelIndex, _T]] = OrderedDict()
    lock = threading.Lock()

    def wrapper(index: ModelIndex) -> _T:
        key = id(index)
        with lock:
            hit = memo.get(key)
            if hit is not None and hit[0] is index:
                memo.move_to_end(key)
                return hit[1]
        value = fn(index)
        with lock:
            memo[key] = (index, value)
            while len(memo) > CACHE_CAPACITY * 2:
                memo.popitem(last=False)
        return value

    wrapper.__doc__ = fn.__doc__
    return wrapper


@per_index
def _hit_cache(index: ModelIndex) -> dict[str, frozenset[int]]:
    return {}


def hits(index: ModelIndex, selector: str) -> frozenset[int]:
    """`select(index, selector)` as a set, memoised per index: toggles re-check every earlier rule."""
    cache = _hit_cache(index)
    found = cache.get(selector)
    if found is None:
        found = frozenset(select(index, selector))
        if len(cache) < 4096:
            cache[selector] = found
    return found


def plan_mask(plan: Plan, index: ModelIndex) -> list[bool]:
    """The plan's trainable mask (same as plans.resolve(...).mask) from memoised selector hits."""
    mask = [plan.effective_base == "trainable"] * len(index.params)
    for rule in plan.rules:
        on = rule.action == "train"
        for i in hits(index, rule.selector):
            mask[i] = on
    return mask
