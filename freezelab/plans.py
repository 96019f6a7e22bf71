"""Freeze plans: a base state plus ordered rules, last match wins; `lora` rules add adapters.

A plan is data: it is resolved against a ModelIndex into a trainable mask and
its adapters (for previews, counts and estimates, no model touched) and applied
to a real model in exactly one place, `apply` (requires_grad; the adapters are
injected with PEFT by `freezelab.peft_build`). Reading plan files:
`freezelab.plan_files`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from freezelab.adapters import AdapterError, Adapters, adapter_warnings, resolve_adapters
from freezelab.choices import member, spelled
from freezelab.errors import LimitError, PlanError, PlanLimitError, SelectorError, SelectorLimitError
from freezelab.index import ModelIndex
from freezelab.index_memo import per_index
from freezelab.lora import LoraSettings, Quantization
from freezelab.lora import alpha as lora_alpha
from freezelab.lora import rank as lora_rank
from freezelab.selectors import PLAN_BUDGET_S, parse, plan_too_slow, reach, select

if TYPE_CHECKING:
    import torch

SCHEMA = "freezelab.plan/2"
SCHEMAS = ("freezelab.plan/1", SCHEMA)  # read: version 1 has no adapters
MAX_RULES = 1000
MAX_PLAN_BYTES = 256_000
MAX_HIT_INDICES = 200_000  # parameter indices memoised per index by hits() (~75 bytes each)
MAX_HIT_SELECTORS = 4096
MAX_SIMPLIFY = 64          # rules a plan may have for append_rule to look for redundant ones


class Action(StrEnum):
    """What a rule does to the parameters its selector names."""

    TRAIN = "train"
    FREEZE = "freeze"
    LORA = "lora"      # adapters on the Linear layers the selector reaches (freezelab.adapters)


class Base(StrEnum):
    """The state every parameter starts in before the rules apply."""

    FROZEN = "frozen"
    TRAINABLE = "trainable"


def _member(choice: type[StrEnum], value: object, what: str) -> StrEnum:
    """`value` (a plain string or a member) as a member of `choice`, or a PlanError."""
    found = member(choice, value)
    if found is None:
        shown = str(value) if isinstance(value, str) else value  # another enum's member: by its value
        raise PlanError(f"{what} must be {spelled(choice)}, got {shown!r}")
    return found


@dataclass(frozen=True)
class Rule:
    action: Action
    selector: str
    r: int | None = None          # a lora rule's own rank (None: the plan's)
    alpha: float | None = None    # a lora rule's own alpha (None: the plan's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", _member(Action, self.action, "rule action"))  # frozen: set at creation
        if (self.r is not None or self.alpha is not None) and self.action != Action.LORA:
            raise PlanError(f"only a lora rule takes r= and alpha=, not {self.action} {self.selector}")
        if self.r is not None:
            object.__setattr__(self, "r", lora_rank(self.r, "a lora rule's r"))
        if self.alpha is not None:
            object.__setattr__(self, "alpha", lora_alpha(self.alpha, "a lora rule's alpha"))
        parse(self.selector)  # syntax errors surface when the rule is made

    def __str__(self) -> str:
        options = (f" r={self.r}" if self.r is not None else "") + (f" alpha={self.alpha:g}" if self.alpha is not None
                                                                     else "")
        return f"{self.action} {self.selector}{options}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action.value, "selector": self.selector}
        if self.r is not None:
            out["r"] = self.r
        if self.alpha is not None:
            out["alpha"] = self.alpha
        return out


@dataclass(frozen=True)
class Plan:
    base: Base | None = None      # None: frozen if the first rule trains, trainable if it freezes
    rules: tuple[Rule, ...] = ()
    preset: str | None = None     # the preset this plan started from, for display
    lora: LoraSettings = LoraSettings()        # r, alpha, dropout, DoRA of every lora rule
    quant: Quantization = Quantization()       # how the frozen Linear weights are stored

    def __post_init__(self) -> None:
        if self.base is not None:
            object.__setattr__(self, "base", _member(Base, self.base, "plan base"))
        if len(self.rules) > MAX_RULES:
            raise PlanLimitError(f"a plan may have at most {MAX_RULES} rules, this one has {len(self.rules)}")

    @property
    def effective_base(self) -> Base:
        if self.base is not None:
            return self.base
        if self.rules and self.rules[0].action == Action.FREEZE:
            return Base.TRAINABLE
        return Base.FROZEN

    @property
    def has_adapters(self) -> bool:
        return any(r.action == Action.LORA for r in self.rules)

    def then(self, action: Action, selector: str) -> Plan:
        return self.with_rules((*self.rules, Rule(action, selector)))

    def with_rules(self, rules: tuple[Rule, ...]) -> Plan:
        """The same plan (base made explicit, preset, adapter settings) with other rules."""
        return replace(self, base=self.base or self.effective_base, rules=rules)

    def to_text(self) -> str:
        lines = [f"base {self.effective_base}"]
        if self.has_adapters or not self.lora.is_default:
            lines.append(self.lora.to_text())
        if self.quant.on:
            lines.append(self.quant.to_text())
        return "\n".join([*lines, *map(str, self.rules)])

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "base": self.effective_base.value, "preset": self.preset,
                "rules": [r.to_dict() for r in self.rules], "lora": self.lora.to_dict(),
                "quant": self.quant.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class Resolution:
    """A plan resolved against one model's index."""

    plan: Plan
    mask: list[bool]                                   # per index.params: trainable?
    matched: list[int] = field(default_factory=list)   # tensors each rule matched
    warnings: list[str] = field(default_factory=list)
    adapters: Adapters = field(default_factory=Adapters)  # the lora rules' layers, the quantized weights

    def trainable_names(self, index: ModelIndex) -> set[str]:
        return {p.name for p, on in zip(index.params, self.mask) if on}

    def adapted(self, index: ModelIndex) -> tuple[ModelIndex, list[bool]]:
        """The index of the adapted model (adapter tensors added, as PEFT names them) and its mask
        (every adapter tensor trains): what counts, the tree and the sanity step's checks read."""
        from freezelab.adapter_index import adapted_index

        extended = adapted_index(index, self.adapters)
        return extended, self.mask + [True] * (len(extended.params) - len(self.mask))


def resolve(plan: Plan, index: ModelIndex) -> Resolution:
    """Compute which parameters train, without touching any model.

    Raises SelectorError naming the rule when a selector matches nothing, AdapterError when a lora rule
    reaches no Linear layer or one that trains in full."""
    found = rule_hits(plan, index)
    mask = plan_mask(plan, index, found)
    adapters = resolve_adapters(index, plan, found, mask) if plan.has_adapters or plan.quant.on else Adapters()
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
    warnings += dead_warnings(index, mask) + adapter_warnings(index, adapters)
    return Resolution(plan, mask, [len(hit) for hit in found], warnings, adapters)


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
            kind = SelectorLimitError if isinstance(err, LimitError) else SelectorError
            raise kind(f"rule {n} ({rule}): {err}") from None
    return found


def plan_mask(plan: Plan, index: ModelIndex, found: list[frozenset[int]] | None = None) -> list[bool]:
    """The plan's trainable mask alone (what `resolve` computes, without the warnings): the base state,
    then each train / freeze rule in order over its matches (`found`, from rule_hits, when the caller has
    them). A lora rule leaves the mask as it is: the weights it adapts are frozen already."""
    mask = [plan.effective_base == Base.TRAINABLE] * len(index.params)
    for rule, hit in zip(plan.rules, rule_hits(plan, index) if found is None else found):
        if rule.action == Action.LORA:
            continue
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
    whose removal leaves the mask unchanged (a rule that changes nothing is not added). A lora rule is
    never dropped and covers nothing (it sets no requires_grad flag), and the rules before it are judged
    only against the rules up to it (they decide which weights it may adapt). The resulting mask and
    adapters always equal those of `plan.then(action, selector)`.

    Raises SelectorError when the selector matches nothing, AdapterError when the result gives a layer
    both an adapter and a trainable weight."""
    new = Rule(action, selector)
    later = set() if new.action == Action.LORA else set(hits(index, selector))
    kept: list[Rule] = [new]
    for old in reversed(plan.rules):
        if old.action == Action.LORA:
            kept.append(old)
            later = set()
            continue
        matched = hits(index, old.selector)
        if not matched <= later:
            kept.append(old)
            later |= matched
    return _without_neutral_rules(plan.with_rules(tuple(reversed(kept))), index)


def _outcome(plan: Plan, index: ModelIndex) -> tuple[list[bool], tuple[Any, ...]]:
    """What a plan decides: its mask and, when it has lora rules, its adapted layers (AdapterError when invalid)."""
    found = rule_hits(plan, index)
    mask = plan_mask(plan, index, found)
    if not plan.has_adapters:
        return mask, ()
    return mask, resolve_adapters(index, plan, found, mask).layers


def _without_neutral_rules(plan: Plan, index: ModelIndex) -> Plan:
    """Drop, newest first, each train / freeze rule whose removal changes neither the mask nor the adapters."""
    target = _outcome(plan, index)  # an invalid plan raises here, before anything is dropped
    if len(plan.rules) > MAX_SIMPLIFY:  # quadratic: long imported plans are left as written
        return plan
    rules = list(plan.rules)
    for i in range(len(rules) - 1, -1, -1):
        if rules[i].action == Action.LORA:
            continue
        trial = plan.with_rules((*rules[:i], *rules[i + 1:]))
        try:
            same = _outcome(trial, index) == target
        except AdapterError:
            same = False
        if same:
            del rules[i]
    return plan.with_rules(tuple(rules))


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
