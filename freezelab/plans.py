"""Freeze plans: a base state plus ordered rules, last match wins.

A plan is data: it is resolved against a ModelIndex into a trainable mask
(for previews, counts and estimates, no model touched) and applied to a real
model in exactly one place, `apply`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from freezelab.errors import PlanError, SelectorError
from freezelab.index import ModelIndex
from freezelab.selectors import PLAN_BUDGET_S, parse, plan_too_slow, reach, select

if TYPE_CHECKING:
    import torch

SCHEMA = "freezelab.plan/1"
ACTIONS = ("train", "freeze")
BASES = ("frozen", "trainable")
MAX_RULES = 1000
MAX_PLAN_BYTES = 256_000


@dataclass(frozen=True)
class Rule:
    action: str   # "train" | "freeze"
    selector: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise PlanError(f"rule action must be train or freeze, got {self.action!r}")
        parse(self.selector)  # syntax errors surface when the rule is made

    def __str__(self) -> str:
        return f"{self.action} {self.selector}"


@dataclass(frozen=True)
class Plan:
    base: str | None = None       # None: frozen if the first rule trains, trainable if it freezes
    rules: tuple[Rule, ...] = ()
    preset: str | None = None     # the preset this plan started from, for display

    def __post_init__(self) -> None:
        if self.base is not None and self.base not in BASES:
            raise PlanError(f"plan base must be frozen or trainable, got {self.base!r}")
        if len(self.rules) > MAX_RULES:
            raise PlanError(f"a plan may have at most {MAX_RULES} rules, this one has {len(self.rules)}")

    @property
    def effective_base(self) -> str:
        if self.base is not None:
            return self.base
        if self.rules and self.rules[0].action == "freeze":
            return "trainable"
        return "frozen"

    def then(self, action: str, selector: str) -> Plan:
        return Plan(self.base or self.effective_base, (*self.rules, Rule(action, selector)), self.preset)

    def to_text(self) -> str:
        return "\n".join([f"base {self.effective_base}", *map(str, self.rules)])

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "base": self.effective_base, "preset": self.preset,
                "rules": [{"action": r.action, "selector": r.selector} for r in self.rules]}

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
    mask = [plan.effective_base == "trainable"] * len(index.params)
    matched, warnings = [], []
    touched: set[int] = set()
    deadline = time.monotonic() + PLAN_BUDGET_S  # many slow selectors must not add up to minutes
    for n, rule in enumerate(plan.rules, 1):
        try:
            if time.monotonic() > deadline:
                raise plan_too_slow(rule.selector)
            hits = select(index, rule.selector, deadline)
        except SelectorError as err:
            raise SelectorError(f"rule {n} ({rule}): {err}") from None
        on = rule.action == "train"
        for i in hits:
            mask[i] = on
        matched.append(len(hits))
        touched.update(hits)
        note = reach(index, rule.selector, hits)
        if note:
            warnings.append(f"rule {n} ({rule}): {note}")
    warnings += [f"{' and '.join(p.names)} are one tied tensor: training or freezing either does both"
                 for i, p in enumerate(index.params) if p.aliases and i in touched]
    warnings += dead_warnings(index, mask)
    return Resolution(plan, mask, matched, warnings)


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


# -- presets -------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    explanation: str          # one line for learners
    base: str
    rules: tuple[tuple[str, str], ...]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("stage1", "LLaVA stage 1", "Pre-training the connector: only the projector learns to map image "
           "features into the LLM's embedding space; vision tower and LLM stay frozen.", "frozen",
           (("train", "@projector"),)),
    Preset("stage2", "LLaVA stage 2", "Visual instruction tuning: projector and the whole LLM train; "
           "the vision tower stays frozen.", "frozen", (("train", "@projector"), ("train", "@llm"))),
    Preset("full", "Full fine-tune", "Everything trains: vision tower, projector and LLM. The most "
           "memory-hungry choice.", "trainable", ()),
    Preset("llm", "LLM only", "Only the language model (embeddings, layers, norm, lm_head) trains; the "
           "image pathway is fixed.", "frozen", (("train", "@llm"),)),
    Preset("vision-projector", "Vision + projector", "Adapt the image side: vision tower and projector "
           "train; the LLM is frozen but gradients still flow through it.", "frozen",
           (("train", "@vision"), ("train", "@projector"))),
    Preset("last-n", "Last N LLM layers", "Only the top N decoder layers of the LLM train: cheap in "
           "optimizer state, and almost no activations are kept below them.", "frozen",
           (("train", "@llm.layers[-{n}:]"),)),
    Preset("lm-head", "lm_head only", "Only the output head trains (a linear probe on the vocabulary). "
           "With tied embeddings this also trains the input embeddings.", "frozen", (("train", "@lm_head"),)),
    Preset("frozen", "All frozen", "Nothing trains: a baseline, and what inference costs.", "frozen", ()),
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
