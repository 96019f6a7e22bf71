"""Segment globs matched in linear time.

A glob is dotted segments: `*` matches any run of characters inside one
segment, `?` one character, `[abc]` / `[a-z]` / `[!abc]` one character of (or
not of) a class, and a whole segment `**` any number of segments (none
included). A glob matches a parameter name when its segments match a run of
whole consecutive segments of the name, so `layers.1` never matches
`layers.10`.

Nothing here backtracks: one segment is matched by a bit-parallel automaton
(one pass over the name segment's characters, the states as the bits of an
int), and the segments of the glob against those of the name by a pass over
the glob that keeps, as bits, the name positions reached so far. The cost of
a match is at most (glob length) x (name length), whatever the glob; a glob
such as `*?*?*?*?*?*?*?*?*?*?*?*?Z` costs what any other of its length does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from freezelab.errors import SelectorError

_STAR = "*"
_ANY = "?"


@dataclass(frozen=True)
class _Class:
    """A bracket expression: `[a-z0-9_]`, or with `!` first, its complement."""

    ranges: tuple[tuple[str, str], ...]
    negate: bool

    def __contains__(self, ch: str) -> bool:
        return any(lo <= ch <= hi for lo, hi in self.ranges) != self.negate


def _class(inner: str, glob: str) -> _Class:
    negate = inner.startswith("!") and len(inner) > 1
    body = inner[1:] if negate else inner
    ranges, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if lo > hi:
                raise SelectorError(f"{glob!r}: bad glob: bad character range {lo}-{hi}")
            ranges.append((lo, hi))
            i += 3
        else:
            ranges.append((body[i], body[i]))
            i += 1
    return _Class(tuple(ranges), negate)


def _tokens(seg: str, glob: str) -> list[str | _Class]:
    """One segment as tokens: `*` (runs of stars collapsed), `?`, a class, or a literal character.
    `[` without a closing `]` after at least one character is a literal `[`."""
    out: list[str | _Class] = []
    i = 0
    while i < len(seg):
        c = seg[i]
        end = seg.find("]", i + 1) if c == "[" else -1
        if c == "*":
            if not out or out[-1] != _STAR:
                out.append(_STAR)
        elif c == "?":
            out.append(_ANY)
        elif end > i + 1:
            out.append(_class(seg[i + 1:end], glob))
            i = end
        else:
            out.append(c)
        i += 1
    return out


@dataclass
class Segment:
    """One glob segment as a bit-parallel automaton: state j means "the first j tokens are matched"."""

    tokens: list[str | _Class]
    literal: str | None = None                            # the segment when it has no wildcard
    _star: int = 0                                        # bit j: token j is `*`
    _masks: dict[str, int] = field(default_factory=dict)  # char -> bits j whose token j takes it
    _seen: dict[str, bool] = field(default_factory=dict)  # name segment -> matched

    def __post_init__(self) -> None:
        if all(isinstance(t, str) and t not in (_STAR, _ANY) for t in self.tokens):
            self.literal = "".join(str(t) for t in self.tokens)
        self._star = sum(1 << j for j, t in enumerate(self.tokens) if t == _STAR)
        self._start = self._closure(1)
        self._accept = 1 << len(self.tokens)

    @property
    def runs(self) -> list[str]:
        """The runs of literal characters between its wildcards: each must appear in a matching name."""
        out, run = [], ""
        for t in [*self.tokens, _STAR]:
            if isinstance(t, str) and t not in (_STAR, _ANY):
                run += t
            elif run:
                out.append(run)
                run = ""
        return out

    def _closure(self, states: int) -> int:
        return states | ((states & self._star) << 1)  # a `*` may match nothing (stars never follow stars)

    def _mask(self, ch: str) -> int:
        mask = 0
        for j, t in enumerate(self.tokens):
            if t == _ANY or (isinstance(t, _Class) and ch in t) or (t == ch and t != _STAR):
                mask |= 1 << j
        self._masks[ch] = mask
        return mask

    def matches(self, text: str) -> bool:
        found = self._seen.get(text)
        if found is None:
            found = self._seen[text] = self._run(text)
        return found

    def _run(self, text: str) -> bool:
        if self.literal is not None:
            return text == self.literal
        states, star = self._start, self._star
        for ch in text:
            mask = self._masks.get(ch)
            if mask is None:
                mask = self._mask(ch)
            states = self._closure(((states & mask) << 1) | (states & star))
            if not states:
                return False
        return bool(states & self._accept)


class Glob:
    """A parsed segment glob; `search(name)` says whether it matches a run of the name's segments."""

    def __init__(self, text: str) -> None:
        self.text = text
        distinct: dict[str, Segment] = {}
        self.segments: list[Segment] = []
        self.gaps: list[bool] = []   # gaps[k]: a `**` stands between segment k-1 and segment k
        gap = False
        for seg in text.split("."):
            if seg == "**":
                gap = True
                continue
            if seg not in distinct:
                distinct[seg] = Segment(_tokens(seg, text))
            self.segments.append(distinct[seg])
            self.gaps.append(gap)
            gap = False
        # literal text must appear in the name as it is: a quick test before the automata
        self._required = tuple({run for s in distinct.values() for run in s.runs})

    def search(self, name: str) -> bool:
        if not self.segments:  # only `**`: every name
            return True
        for literal in self._required:
            if literal not in name:
                return False
        parts = name.split(".")
        n = len(parts)
        full = (1 << n) - 1
        reached = self._at(0, parts, full)          # bit i: glob segments 0..k end at name segment i
        for k in range(1, len(self.segments)):
            if not reached:
                return False
            if self.gaps[k]:
                lowest = reached & -reached
                candidates = full & ~((lowest << 1) - 1)  # any later name segment
            else:
                candidates = (reached << 1) & full        # the next name segment
            reached = self._at(k, parts, candidates)
        return bool(reached)

    def _at(self, k: int, parts: list[str], candidates: int) -> int:
        """The candidate name positions where glob segment k matches."""
        seg, out = self.segments[k], 0
        while candidates:
            bit = candidates & -candidates
            if seg.matches(parts[bit.bit_length() - 1]):
                out |= bit
            candidates ^= bit
        return out
