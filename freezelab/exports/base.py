"""What every export target shares: the result type, name-prefix compression, and
how a setting's trainable set differs from the plan's.

All of it works on a ModelIndex and a trainable mask (one bool per index.params),
never on a model, so exporting a 72B plan costs milliseconds.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from freezelab.errors import FreezelabError
from freezelab.index import ModelIndex


class ExportError(FreezelabError):
    """An export was asked for something it cannot do (unknown target, unwritable file)."""


@dataclass(frozen=True)
class Export:
    target: str
    text: str          # what to paste or save; when not exact, the closest setting, marked so in its header
    exact: bool        # the text reproduces the plan's trainable set exactly on this model
    note: str          # one line: what the text is, or what differs and by how many parameters
    differs: int = 0   # parameters whose trainable state differs from the plan (0 when exact)
    language: str = "text"  # json | python | yaml | shell, for syntax highlighting


@dataclass(frozen=True)
class Difference:
    extra: tuple[int, ...] = ()    # trained by the setting, frozen by the plan
    missing: tuple[int, ...] = ()  # trained by the plan, frozen by the setting

    def numel(self, index: ModelIndex) -> int:
        return sum(index.numels[i] for i in (*self.extra, *self.missing))

    def __bool__(self) -> bool:
        return bool(self.extra or self.missing)


def difference(want: Sequence[bool], got: Sequence[bool]) -> Difference:
    extra = tuple(i for i, (w, g) in enumerate(zip(want, got)) if g and not w)
    missing = tuple(i for i, (w, g) in enumerate(zip(want, got)) if w and not g)
    return Difference(extra, missing)


def comment_lines(marker: str, text: str, width: int = 110) -> list[str]:
    """`text` as comment lines of at most `width` characters, each starting with `marker`."""
    return [marker + line for line in textwrap.wrap(printable(text), width - len(marker), break_on_hyphens=False)]


def printable(text: str) -> str:
    """Text safe inside a one-line comment: a newline in a regex selector must not end the comment."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# -- prefix compression --------------------------------------------------------

@dataclass
class _Node:
    leaf: int | None = None                      # parameter index when a parameter has exactly this name
    children: dict[str, _Node] = field(default_factory=dict)
    below: set[int] = field(default_factory=set)  # every parameter at or under this node


def _trie(index: ModelIndex) -> _Node:
    """Dotted names as a tree. Only primary names: named_parameters() lists a tied tensor once,
    under its first name, so a prefix on an alias (a tied lm_head) would match nothing."""
    root = _Node()
    for i, p in enumerate(index.params):
        node = root
        node.below.add(i)
        for seg in p.name.split("."):
            node = node.children.setdefault(seg, _Node())
            node.below.add(i)
        node.leaf = i
    return root


def compress(index: ModelIndex, required: set[int], allowed: set[int] | None = None) -> list[str]:
    """The fewest whole-module prefixes (ending in '.') and exact names whose `startswith`
    matches cover every parameter in `required` and nothing outside `allowed`
    (default: `required`), in model order. Outermost modules first: a module whose
    parameters are all allowed becomes one prefix."""
    allowed = required if allowed is None else allowed
    out: list[str] = []

    def walk(node: _Node, path: str) -> None:
        if not node.below & required:
            return
        if path and node.below <= allowed:
            if node.children:
                out.append(path + ".")
            if node.leaf is not None:
                out.append(path)
            return
        if node.leaf is not None and node.leaf in required:
            out.append(path)
        for seg, child in node.children.items():
            walk(child, f"{path}.{seg}" if path else seg)

    walk(_trie(index), "")
    return out


def describe(index: ModelIndex, diff: Difference, who: str) -> str:
    """'<who> differs in N parameters: it also trains A the plan freezes (e.g. ...) and freezes B it trains (...)'."""
    parts = []
    if diff.extra:
        parts.append(f"also trains {_count(index, diff.extra)} parameters the plan freezes "
                     f"({_examples(index, diff.extra)})")
    if diff.missing:
        parts.append(f"freezes {_count(index, diff.missing)} parameters the plan trains "
                     f"({_examples(index, diff.missing)})")
    return f"{who} differs in {diff.numel(index):,} parameters: it {' and '.join(parts)}"


def _count(index: ModelIndex, idx: Sequence[int]) -> str:
    return f"{sum(index.numels[i] for i in idx):,}"


def _examples(index: ModelIndex, idx: Sequence[int], shown: int = 2) -> str:
    groups = compress(index, set(idx))
    more = f" and {len(groups) - shown} more" if len(groups) > shown else ""
    return ", ".join(groups[:shown]) + more


def counts_line(index: ModelIndex, mask: Sequence[bool]) -> str:
    trainable = sum(n for n, on in zip(index.numels, mask) if on)
    return f"trains {trainable:,} of {index.total_params:,} parameters"


def closest(index: ModelIndex, mask: Sequence[bool],
            scored: Iterable[tuple[object, Sequence[bool] | AbstractSet[int]]]) -> tuple[object, Difference]:
    """The first candidate with the fewest differing parameters (callers order candidates by preference).
    A candidate's trainable set is a mask, or the set of its trainable indices (cheaper to compare)."""
    want = {i for i, on in enumerate(mask) if on}
    numels = index.numels
    best: tuple[object, set[int], set[int]] | None = None
    best_n = -1
    for setting, got in scored:
        on = got if isinstance(got, AbstractSet) else {i for i, g in enumerate(got) if g}
        extra, missing = on - want, want - on
        n = sum(map(numels.__getitem__, extra)) + sum(map(numels.__getitem__, missing))
        if best is None or n < best_n:
            best, best_n = (setting, extra, missing), n
        if not extra and not missing:
            break
    if best is None:
        raise ExportError("no candidate setting to compare")  # a bug: every target has candidates
    setting, extra, missing = best
    return setting, Difference(tuple(sorted(extra)), tuple(sorted(missing)))
