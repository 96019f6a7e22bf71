"""Selectors: which parameters a plan rule talks about.

  @all @vision @projector @llm @lm_head @embeddings   component aliases
  @llm.layers[-4:]  @vision.layers[0:12]  @llm.layers[3]   layer ranges (Python slices)
  model.language_model.layers.1   *q_proj*   layers.**.mlp    globs over whole dotted segments
  re:layers\\.(30|31)\\.                                      a regular expression (searched)

A glob matches a run of whole segments anywhere in a parameter name, so
`layers.1` matches `...layers.1.mlp...` but never `layers.10`; `*` and `?`
stay inside one segment and `**` spans any number of segments (matched in
linear time: freezelab.globs). A regular expression is compiled within bounds
(freezelab.regexes). Tied parameters match under each of their names.

Matching is bounded in time: one glob or regular expression has
SELECTOR_BUDGET_S over all names, its compile included, and the selectors of
one plan together PLAN_BUDGET_S.
"""

from __future__ import annotations

import difflib
import re
import time
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from freezelab.errors import SelectorError, SelectorLimitError
from freezelab.globs import Glob
from freezelab.index import COMPONENTS, ModelIndex
from freezelab.regexes import RegexError, RegexLimitError, compile_bounded

ALIASES = ("@all", "@vision", "@projector", "@llm", "@lm_head", "@embeddings")
MAX_SELECTOR_CHARS = 512
SELECTOR_BUDGET_S = 0.25  # total time one glob or regular expression may spend over all names, compile included
PLAN_BUDGET_S = 1.0  # all selectors of one plan together (1,000 rules are allowed)
# control, format (e.g. right-to-left override), lone surrogate, and line / paragraph separator characters
_INVISIBLE = ("Cc", "Cf", "Cs", "Zl", "Zp")
_LAYERS = re.compile(r"^@(vision|llm)\.layers\[(.*)\]$")
_INT = re.compile(r"^\s*[-+]?\d+\s*$")

# Names that moved between transformers versions: (old fragment, new fragment).
RENAMES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head", "lm_head"),
    ("vision_tower.vision_model.", "vision_tower."),
    ("vision_model.", ""),
)


class SelectorKind(StrEnum):
    """What a selector's text is."""

    ALIAS = "alias"                # @vision, @llm, ...
    LAYERS = "layers"              # @llm.layers[-4:]
    GLOB = "glob"                  # layers.**.mlp
    REGEX = "regex"                # re:...


@dataclass(frozen=True)
class Selector:
    text: str
    kind: SelectorKind
    pattern: Any = None            # Glob, compiled regex, or (tower, slice) for layers
    compile_s: float = 0.0         # seconds compiling the regex took: charged to its budget

    def __str__(self) -> str:
        return self.text


def _parse_slice(body: str, text: str) -> slice | int:
    if _INT.match(body):
        return int(body)
    parts = body.split(":")
    if len(parts) > 3 or not all(p.strip() == "" or _INT.match(p) for p in parts):
        raise SelectorError(f"{text!r}: layer range must be Python slice syntax, e.g. [-4:] or [0:12] or [3]")
    nums = [int(p) if p.strip() else None for p in parts]
    if len(nums) == 3 and nums[2] == 0:
        raise SelectorError(f"{text!r}: slice step cannot be zero")
    return slice(*nums)


def parse(text: str) -> Selector:
    """Check a selector's syntax (without a model)."""
    if not isinstance(text, str):
        raise SelectorError(f"a selector must be text, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise SelectorError("empty selector")
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorError(f"selector is {len(text)} characters long; the limit is {MAX_SELECTOR_CHARS}")
    bad = next((c for c in text if unicodedata.category(c) in _INVISIBLE), None)
    if bad is not None:  # no parameter name has one; shown raw they could rewrite a terminal or a page
        raise SelectorError(f"selector contains the invisible or control character U+{ord(bad):04X}; write it as "
                            "a regex escape if you really mean it")
    if text.startswith("re:"):
        body = text[3:]
        if not body:
            raise SelectorError("'re:' needs a regular expression after it")
        try:
            compiled = compile_bounded(body)
        except RegexError as err:
            kind = SelectorLimitError if isinstance(err, RegexLimitError) else SelectorError
            raise kind(f"{text!r}: bad regular expression: {err}") from None
        return Selector(text, SelectorKind.REGEX, compiled.pattern, compiled.compile_s)
    if text.startswith("@"):
        if text in ALIASES:
            return Selector(text, SelectorKind.ALIAS)
        m = _LAYERS.match(text)
        if m:
            return Selector(text, SelectorKind.LAYERS, (m.group(1), _parse_slice(m.group(2), text)))
        close = difflib.get_close_matches(text, [*ALIASES, "@llm.layers[-4:]", "@vision.layers[0:12]"], n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; aliases: {', '.join(ALIASES)}"
        raise SelectorError(f"unknown alias {text!r}{hint}")
    if any(c.isspace() for c in text):
        raise SelectorError(f"{text!r}: a glob cannot contain spaces (use re: for a regular expression)")
    if ".." in text or text.startswith(".") or text.endswith("."):
        raise SelectorError(f"{text!r}: empty dotted segment")
    return Selector(text, SelectorKind.GLOB, Glob(text))  # a bad character class such as [9-0] raises SelectorError


def _layer_params(index: ModelIndex, tower: str, which: slice | int, text: str) -> list[int]:
    paths = index.layers.get(tower, [])
    if isinstance(which, int):
        if not -len(paths) <= which < len(paths):
            raise SelectorError(f"{text!r}: the {tower} tower has {len(paths)} layers (0-{len(paths) - 1})")
        chosen = [paths[which]]
    else:
        chosen = paths[which]
    if not chosen:
        raise SelectorError(f"{text!r} selects no layer: the {tower} tower has {len(paths)} layers "
                            f"(0-{len(paths) - 1})")
    out: set[int] = set()
    for path in chosen:
        out.update(index.module_by_path[path].params)
    return sorted(out)


def _names_search(index: ModelIndex, sel: Selector, shared: float | None = None) -> list[int]:
    """Parameters whose names the glob or regex matches; it stops at its own time budget (a regex's compile
    counts against it) or at the `shared` deadline of the plan it belongs to, whichever comes first."""
    own = time.monotonic() + SELECTOR_BUDGET_S - sel.compile_s
    deadline = own if shared is None else min(own, shared)
    match = _regex_search if sel.kind == SelectorKind.REGEX else _glob_search
    hits = []
    for i, p in enumerate(index.params):
        for name in p.names:
            left = deadline - time.monotonic()
            found = match(sel.pattern, name, left) if left > 0 else None
            if found is None:
                raise _too_slow(sel, shared is not None and shared < own)
            if found:
                hits.append(i)
                break
    return hits


def _regex_search(pattern: Any, name: str, left: float) -> bool | None:
    """Whether the compiled regex is found in `name`; None when it runs out of time."""
    try:
        return pattern.search(name, timeout=left) is not None
    except TimeoutError:
        return None


def _glob_search(glob: Glob, name: str, left: float) -> bool:
    return glob.search(name)  # linear in the glob's and the name's length: never stopped mid-name


def _too_slow(sel: Selector, plan_budget: bool) -> SelectorError:
    if plan_budget:
        return plan_too_slow(sel.text)
    if sel.kind == SelectorKind.GLOB:
        return SelectorLimitError(f"{sel.text!r}: the glob takes longer than {SELECTOR_BUDGET_S:g} s to match; "
                             "simplify it")
    return SelectorLimitError(f"{sel.text!r}: the regular expression takes too long (longer than "
                         f"{SELECTOR_BUDGET_S:g} s, its compile included; nested repetition?); simplify it")


def plan_too_slow(text: str) -> SelectorError:
    """The one message for a plan whose selectors together exceed PLAN_BUDGET_S."""
    return SelectorLimitError(f"{text!r}: the plan's selectors together take longer than {PLAN_BUDGET_S:g} s to "
                         "compile and match; simplify them or use fewer rules")


def _alias_params(index: ModelIndex, alias: str) -> list[int]:
    if alias == "@all":
        return list(range(len(index.params)))
    if alias in ("@vision", "@projector", "@llm"):
        return index.component_params(alias[1:])
    roots = index.roots["lm_head" if alias == "@lm_head" else "embeddings"]
    out: set[int] = set()
    for path in roots:
        out.update(index.module_by_path[path].params)
    return sorted(out)


def _no_match(index: ModelIndex, sel: Selector, deadline: float | None = None) -> SelectorError:
    hint = ""
    if sel.kind == SelectorKind.GLOB:
        for old, new in RENAMES:
            if old in sel.text:
                renamed = sel.text.replace(old, new).strip(".")
                try:
                    if renamed and _names_search(index, parse(renamed), deadline):
                        hint = (f"; names changed in transformers 5 (this is {index.transformers_version}): "
                                f"did you mean {renamed!r}?")
                        break
                except SelectorError:
                    pass
        if not hint:
            candidates = sorted({m.path for m in index.modules if m.path} | {n for p in index.params for n in p.names}
                                | {seg for p in index.params for seg in p.name.split(".") if not seg.isdigit()})
            close = difflib.get_close_matches(sel.text, candidates, n=3, cutoff=0.6)
            hint = f"; closest names: {', '.join(close)}" if close else ""
    elif sel.kind == SelectorKind.ALIAS and sel.text == "@lm_head" and not index.roots["lm_head"]:
        hint = "; this model has no output head"
    return SelectorError(f"{sel.text!r} matches no parameter of {index.name}{hint}")


def select(index: ModelIndex, selector: Selector | str, deadline: float | None = None) -> list[int]:
    """Indices (into index.params) of the parameters a selector names; never empty.

    `deadline` (a time.monotonic() value) bounds the time a glob or regex may take together with others."""
    sel = parse(selector) if isinstance(selector, str) else selector
    if sel.kind == SelectorKind.ALIAS:
        hits = _alias_params(index, sel.text)
    elif sel.kind == SelectorKind.LAYERS:
        tower, which = sel.pattern
        hits = _layer_params(index, tower, which, sel.text)
    else:
        hits = _names_search(index, sel, deadline)
    if not hits:
        raise _no_match(index, sel, deadline)
    return hits


def reach(index: ModelIndex, selector: Selector | str, hits: list[int]) -> str | None:
    """A warning when a name pattern reaches into more than one component (e.g. `q_proj`
    also catching the vision tower), or None. Aliases and layer ranges are precise."""
    sel = parse(selector) if isinstance(selector, str) else selector
    if sel.kind not in (SelectorKind.GLOB, SelectorKind.REGEX):
        return None
    counts = {c: 0 for c in COMPONENTS}
    for i in hits:
        counts[index.params[i].component] += 1
    spanned = [f"{n} in {c}" for c, n in counts.items() if n]
    if len(spanned) < 2:
        return None
    return f"{sel.text!r} reaches into several components: {', '.join(spanned)} parameter tensors"
