"""Regular expressions from users, compiled within bounds.

Compiling a pattern is not free: the `regex` module expands a counted
repetition into that many copies, so `a{4294967294}` (19 characters) grows
the process by gigabytes and `a{2000000}` takes seconds and leaves hundreds
of megabytes in the module's pattern cache. Before anything is compiled, a
pattern is refused when a repetition count exceeds MAX_REPEAT, when its
counts together could expand it beyond MAX_EXPANSION elements, or when its
groups nest deeper than MAX_NESTING. The bound on expansion needs no parse:
a count can only repeat what stands before it, so every character of the
pattern is weighted by the product of the counts after it; the sum of these
weights is at least the size of the expanded pattern, for any grammar.

Compiled patterns are kept in one LRU bounded by entries and by expansion,
never in the `regex` module's own cache; the module's per-pattern locale
notes are purged every PURGE_EVERY compiles so they cannot grow either.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import regex

MAX_REPEAT = 1000          # largest count in {m}, {m,} or {m,n}: parameter names are under 200 characters
MAX_EXPANSION = 100_000    # compiles in well under 0.1 s (about 1 us per expanded element, measured)
MAX_NESTING = 64           # parenthesised groups inside each other (regex parses them recursively)
CACHE_ENTRIES = 256
CACHE_EXPANSION = 1_000_000
PURGE_EVERY = 256

# {m}, {m,}, {,n}, {m,n}, with the whitespace and comments a verbose pattern (?x) may put inside: regex reads
# all of these as counts (ASCII digits only)
_PART = r"((?:[0-9\s]|#[^\n]*\n)*)"
_COUNT = re.compile(r"\{" + _PART + ",?" + _PART + r"\}")
_NOT_DIGITS = re.compile(r"#[^\n]*\n|\s")


class RegexError(ValueError):
    """The pattern is refused before compiling, or does not compile; the message says why."""


class RegexLimitError(RegexError):
    """The pattern goes over a bound (a repetition count, its expanded size, its nesting)."""


@dataclass(frozen=True)
class Compiled:
    pattern: Any          # a regex.Pattern
    expansion: int        # the bound on its expanded size (see module doc)
    compile_s: float      # seconds its compile took


def _counts(body: str) -> list[tuple[int, int]]:
    """(end position, largest count) of each counted repetition in `body`."""
    out = []
    for m in _COUNT.finditer(body):
        low, high = (_NOT_DIGITS.sub("", g) for g in m.groups())
        if not (low or high):
            continue  # `{,}` repeats nothing more than `*`; `{x}` is literal text
        out.append((m.end(), max(int(low or 0), int(high or 0))))
    return out


def expansion(body: str) -> int:
    """An upper bound on the expanded size of `body`; RegexError when a single count is too large."""
    counts = _counts(body)
    for _, count in counts:
        if count > MAX_REPEAT:
            raise RegexLimitError(f"the repetition count {count:,} is above the limit of {MAX_REPEAT:,}")
    total, weight, at = 0, 1, len(body)
    for end, count in reversed(counts):  # walk right to left: characters before a count weigh `count` more
        total += (at - end) * weight
        weight *= max(count, 1)
        if weight > MAX_EXPANSION:
            return weight * max(end, 1)
        at = end
    return total + at * weight


def nesting(body: str) -> int:
    """How deep the parentheses of `body` go (escaped ones skipped)."""
    depth = deepest = 0
    escaped = False
    for ch in body:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth = max(depth - 1, 0)
    return deepest


class _Cache:
    """LRU of compiled patterns, bounded by entries and by their summed expansion."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Compiled] = OrderedDict()
        self._held = 0
        self._compiles = 0
        self._lock = threading.Lock()

    def get(self, body: str) -> Compiled | None:
        with self._lock:
            found = self._items.get(body)
            if found is not None:
                self._items.move_to_end(body)
            return found

    def compiled_one(self) -> None:
        """Count a compile (failed ones too: the regex module notes each pattern it parsed)."""
        with self._lock:
            self._compiles += 1
            if self._compiles % PURGE_EVERY == 0:
                regex.purge()

    def put(self, body: str, item: Compiled) -> None:
        with self._lock:
            if body in self._items:
                return
            self._items[body] = item
            self._held += item.expansion
            while len(self._items) > 1 and (len(self._items) > CACHE_ENTRIES or self._held > CACHE_EXPANSION):
                _, old = self._items.popitem(last=False)
                self._held -= old.expansion

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def held(self) -> int:
        with self._lock:
            return self._held


CACHE = _Cache()


def compile_bounded(body: str) -> Compiled:
    """`body` compiled with the regex module (searches take a timeout), or RegexError."""
    found = CACHE.get(body)
    if found is not None:
        return found
    size = expansion(body)
    if size > MAX_EXPANSION:
        raise RegexLimitError(f"its repetition counts could expand it to more than {MAX_EXPANSION:,} elements; "
                         "use smaller counts")
    if nesting(body) > MAX_NESTING:
        raise RegexLimitError(f"its groups nest more than {MAX_NESTING} deep")
    started = time.monotonic()
    try:
        pattern = regex.compile(body, cache_pattern=False)
    except Exception as err:  # noqa: BLE001 - regex.error, and whatever else its parser raises on odd input
        raise RegexError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    finally:
        CACHE.compiled_one()
    item = Compiled(pattern, size, time.monotonic() - started)
    CACHE.put(body, item)
    return item
