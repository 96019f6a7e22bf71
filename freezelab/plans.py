"""Freeze plans: a base state plus ordered rules, last match wins.

A plan is data: it is resolved against a ModelIndex into a trainable mask
(for previews, counts and estimates, no model touched) and applied to a real
model in exactly one place, `apply`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from freezelab.choices import member
from freezelab.errors import PlanError, SelectorError
from freezelab.index import ModelIndex
from freezelab.index_memo import per_index
from freezelab.selectors import PLAN_BUDGET_S, parse, plan_too_slow, reach, select

if TYPE_CHECKING:
    import torch

SCHEMA = "freezelab.plan/1"
MAX_RULES = 1000
MAX_PLAN_BYTES = 256_000
MAX_HIT_INDICES = 200_000  # parameter indices memoised per index by hits() (~75 bytes each)
MAX_HIT_SELECTORS = 4096
MAX_SIMPLIFY = 64          # rules a plan may have for append_rule to look for redundant ones


class Action(StrEnum):
    """What a rule does to the parameters its selector names."""

    TRAIN = "train"
    FREEZE = "freeze"


class Base(StrEnum):
    """The state every parameter starts in before the rules apply."""

    FROZEN = "frozen"
    TRAINABLE = "trainable"


def _member(choice: type[StrEnum], value: object, what: str) -> StrEnum:
    """`value` (a plain string or a member) as a member of `choice`, or a PlanError."""
    found = member(choice, value)
    if found is None:
        shown = str(value) if isinstance(value, str) else value  # another enum's member: by its value
        raise PlanError(f"{what} must be {' or '.join(choice)}, got {shown!r}")
    return found


@dataclass(frozen=True)
class Rule:
    action: Action
    selector: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", _member(Action, self.action, "rule action"))  # frozen: set at creation
        parse(self.selector)  # syntax errors surface when the rule is made

    def __str__(self) -> str:
        return f"{self.action} {self.selector}"


@dataclass(frozen=True)
class Plan:
    base: Base | None = None      # None: frozen if the first rule trains, trainable if it freezes
    rules: tuple[Rule, ...] = ()
    preset: str | None = None     # the preset this plan started from, for display

    def __post_init__(self) -> None:
        if self.base is not None:
            object.__setattr__(self, "base", _member(Base, self.base, "plan base"))
        if len(self.rules) > MAX_RULES:
            raise PlanError(f"a plan may have at most {MAX_RULES} rules, this one has {len(self.rules)}")

    @property
    def effective_base(self) -> Base:
        if self.base is not None:
            return self.base
        if self.rules and self.rules[0].action == Action.FREEZE:
            return Base.TRAINABLE
        return Base.FROZEN

    def then(self, action: Action, selector: str) -> Plan:
        return Plan(self.base or self.effective_base, (*self.rules, Rule(action, selector)), self.preset)

    def to_text(self) -> str:
        return "\n".join([f"base {self.effective_base}", *map(str, self.rules)])

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "base": self.effective_base.value, "preset": self.preset,
                "rules": [{"action": r.action.value, "selector": r.selector} for r in self.rules]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class Resolution:
    """A plan resolved against one model's index."""

    plan: Plan
    mask: list[bool]                                   # per index.params: trainable?
    matched: list[int] = field(default_factory=list)   # tensors each rule matched
    warnings: list[str] = field(default_factory=list)

    def trainable_names(self, index: ModelIndex) -> set[str]:
        return {p.name for p, on in zip(index.params, self.mask) if on}


def resolve(plan: Plan, index: ModelIndex) -> Resolution:
    """Compute which parameters train, without touching any model.

    Raises SelectorError naming the rule when a selector matches nothing."""
    found = rule_hits(plan, index)
    mask = plan_mask(plan, index, found)
    warnings = []
    notes: dict[str, str | None] = {}  # a selector matches the same wherever it is in the plan
    for n, (rule, hit) in enumerate(zip(plan.rules, found), 1):
        if rule.selector not in notes:
            notes[rule.selector] = reach(index, rule.selector, hit)
        note = notes[rule.selector]
        if note:
            warnings.append(f"rule {n} ({rule}): {note}")
    touched = frozenset().union(*found)
    warnings += [f"{' and '.join(p.names)} are one tied tensor: training or freezing either does both"
                 for i, p in enumerate(index.params) if p.aliases and i in touched]
    warnings += dead_warnings(index, mask)
    return Resolution(plan, mask, [len(hit) for hit in found], warnings)


def rule_hits(plan: Plan, index: ModelIndex) -> list[frozenset[int]]:
    """The parameters each rule's selector matches, from the memo; the globs and regexes a plan still has to run
    share one time budget. Raises SelectorError naming the rule when a selector matches nothing."""
    deadline = time.monotonic() + PLAN_BUDGET_S  # many slow selectors must not add up to minutes
    found = []
    for n, rule in enumerate(plan.rules, 1):
        try:
            if time.monotonic() > deadline:
                raise plan_too_slow(rule.selector)
            found.append(hits(index, rule.selector, deadline))
        except SelectorError as err:
            raise SelectorError(f"rule {n} ({rule}): {err}") from None
    return found


def plan_mask(plan: Plan, index: ModelIndex, found: list[frozenset[int]] | None = None) -> list[bool]:
    """The plan's trainable mask alone (what `resolve` computes, without the warnings): the base state,
    then each rule in order over its matches (`found`, from rule_hits, when the caller has them)."""
    mask = [plan.effective_base == Base.TRAINABLE] * len(index.params)
    for rule, hit in zip(plan.rules, rule_hits(plan, index) if found is None else found):
        on = rule.action == Action.TRAIN
        for i in hit:
            mask[i] = on
    return mask


def dead_warnings(index: ModelIndex, mask: list[bool]) -> list[str]:
    """Trainable parameters that can never receive a gradient, grouped by reason."""
    by_reason: dict[str, list[int]] = {}
    for i, p in enumerate(index.params):
        if mask[i] and p.name in index.dead:
            by_reason.setdefault(index.dead[p.name], []).append(i)
    out = []
    for reason, idx in by_reason.items():
        n = sum(index.numels[i] for i in idx)
        first = index.params[idx[0]].name.rsplit(".", 1)[0]
        out.append(f"{len(idx)} trainable tensors ({n:,} parameters, e.g. {first}) will never get a "
                   f"gradient: {reason}")
    return out


def apply(plan: Plan, model: torch.nn.Module, index: ModelIndex) -> Resolution:
    """Set requires_grad on `model` as the plan says: the single place plans touch a model."""
    resolution = resolve(plan, index)
    params = dict(model.named_parameters())
    missing = [p.name for p in index.params if p.name not in params]
    if missing or len(params) != len(index.params):
        raise PlanError(f"the index does not describe this model ({len(missing)} parameter names differ)")
    for p, on in zip(index.params, resolution.mask):
        params[p.name].requires_grad_(on)
    return resolution


# -- selector matches, memoised per index ----------------------------------------

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


def hits(index: ModelIndex, selector: str, deadline: float | None = None) -> frozenset[int]:
    """`select(index, selector, deadline)` as a set, memoised per index: every resolve, and each toggle
    re-checking every earlier rule, runs a selector once. Errors are not memoised."""
    cache = _hit_cache(index)
    found = cache.get(selector)
    if found is None:
        found = frozenset(select(index, selector, deadline))
        cache.put(selector, found)
    return found


# -- editing a plan ----------------------------------------------------------------

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


# -- presets -------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    explanation: str          # one line for learners
    base: Base
    rules: tuple[tuple[Action, str], ...]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("stage1", "LLaVA stage 1", "Pre-training the connector: only the projector learns to map image "
           "features into the LLM's embedding space; vision tower and LLM stay frozen.", Base.FROZEN,
           ((Action.TRAIN, "@projector"),)),
    Preset("stage2", "LLaVA stage 2", "Visual instruction tuning: projector and the whole LLM train; "
           "the vision tower stays frozen.", Base.FROZEN, ((Action.TRAIN, "@projector"), (Action.TRAIN, "@llm"))),
    Preset("full", "Full fine-tune", "Everything trains: vision tower, projector and LLM. The most "
           "memory-hungry choice.", Base.TRAINABLE, ()),
    Preset("llm", "LLM only", "Only the language model (embeddings, layers, norm, lm_head) trains; the "
           "image pathway is fixed.", Base.FROZEN, ((Action.TRAIN, "@llm"),)),
    Preset("vision-projector", "Vision + projector", "Adapt the image side: vision tower and projector "
           "train; the LLM is frozen but gradients still flow through it.", Base.FROZEN,
           ((Action.TRAIN, "@vision"), (Action.TRAIN, "@projector"))),
    Preset("last-n", "Last N LLM layers", "Only the top N decoder layers of the LLM train: cheap in "
           "optimizer state, and almost no activations are kept below them.", Base.FROZEN,
           ((Action.TRAIN, "@llm.layers[-{n}:]"),)),
    Preset("lm-head", "lm_head only", "Only the output head trains (a linear probe on the vocabulary). "
           "With tied embeddings this also trains the input embeddings.", Base.FROZEN, ((Action.TRAIN, "@lm_head"),)),
    Preset("frozen", "All frozen", "Nothing trains: a baseline, and what inference costs.", Base.FROZEN, ()),
)}
_LAST_N = re.compile(r"^last-?(\d+)$")


def preset(name: str, n: int = 4) -> Plan:
    """The plan of a preset; `last-N` (e.g. last-4) fixes N in the name."""
    key = name.strip().lower().replace("_", "-")
    m = _LAST_N.match(key)
    if m:
        key, n = "last-n", int(m.group(1))
    if key not in PRESETS:
        raise PlanError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    if n < 1:
        raise PlanError("last-N needs N of at least 1")
    p = PRESETS[key]
    rules = tuple(Rule(a, s.format(n=n)) for a, s in p.rules)
    return Plan(p.base, rules, key if key != "last-n" else f"last-{n}")


def preset_names() -> list[str]:
    return [n if n != "last-n" else "last-N" for n in PRESETS]


# -- import ----------------------------------------------------------------------

_RULE_LINE = re.compile(r"^\s*(train|freeze|base)\s+(\S.*?)\s*$")


def _imported_rule(action: Any, selector: str, where: str, made: int, deadline: float) -> Rule:
    """One rule of an imported plan: checked (its regex compiled) within the plan's time budget."""
    if made >= MAX_RULES:
        raise PlanError(f"a plan may have at most {MAX_RULES} rules, this one has more")
    if time.monotonic() > deadline:
        raise PlanError(f"{where}: the plan's selectors take longer than {PLAN_BUDGET_S:g} s to compile; "
                        "simplify them or use fewer rules")
    try:
        return Rule(action, selector)
    except SelectorError as err:
        raise PlanError(f"{where}: {err}") from None


def from_dict(data: Any) -> Plan:
    if not isinstance(data, dict):
        raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise PlanError(f"not a freezelab plan (schema {schema!r}, expected {SCHEMA!r})")
    # model, note and the counts are informational (written by exports, ignored here)
    unknown = set(data) - {"schema", "base", "preset", "rules", "model", "note", "trainable_params", "total_params"}
    if unknown:
        raise PlanError(f"unknown plan field(s): {', '.join(sorted(unknown))}")
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise PlanError("plan 'rules' must be a list")
    if len(rules) > MAX_RULES:
        raise PlanError(f"a plan may have at most {MAX_RULES} rules, this one has {len(rules)}")
    parsed: list[Rule] = []
    deadline = time.monotonic() + PLAN_BUDGET_S
    for n, r in enumerate(rules, 1):
        if not isinstance(r, dict) or set(r) != {"action", "selector"}:
            raise PlanError(f"plan rule {n} must be an object with exactly 'action' and 'selector'")
        if not isinstance(r["selector"], str):
            raise PlanError(f"plan rule {n}: selector must be text")
        parsed.append(_imported_rule(r["action"], r["selector"], f"plan rule {n}", len(parsed), deadline))
    preset_name = data.get("preset")
    if preset_name is not None and not (isinstance(preset_name, str) and len(preset_name) <= 64
                                        and preset_name.isprintable()):
        raise PlanError("plan 'preset' must be null or a short name such as stage1 or last-4")
    return Plan(data.get("base"), tuple(parsed), preset_name)


def from_json(text: str | bytes) -> Plan:
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(f"plan file is {len(text):,} bytes; the limit is {MAX_PLAN_BYTES:,}")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PlanError(f"plan is not valid JSON: {err}") from None
    except (ValueError, RecursionError):  # a number of thousands of digits, or nesting thousands deep
        raise PlanError("plan is not usable JSON (absurdly long numbers or deep nesting)") from None
    return from_dict(data)


def from_text(text: str) -> Plan:
    """Rules one per line (`train @projector`), optional `base frozen|trainable`, `#` comment lines."""
    base, rules = None, []
    deadline = time.monotonic() + PLAN_BUDGET_S
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _RULE_LINE.match(line)
        if not m:
            raise PlanError(f"line {n}: expected 'train SELECTOR', 'freeze SELECTOR' or 'base frozen|trainable'")
        if m.group(1) == "base":
            base = m.group(2)
            continue
        rules.append(_imported_rule(m.group(1), m.group(2), f"line {n}", len(rules), deadline))
    return Plan(base, tuple(rules))
