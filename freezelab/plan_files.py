"""Reading plans: freezelab plan JSON (schema `freezelab.plan/2`, and version 1 files, which have no
adapters) and the text format, one rule per line:

    base frozen                                   # optional: frozen | trainable
    adapter r=128 alpha=256 dropout=0.05 dora=false   # optional: the lora rules' settings
    quant 4bit type=nf4 double=true               # optional: none | 8bit | 4bit
    train @projector
    lora @llm                                     # adapters on the Linear layers it reaches
    lora @vision.layers[-4:] r=16 alpha=32        # this rule's own rank and alpha
    freeze *.bias

`#` starts a comment line. Every selector is checked (a regular expression compiled) within the
plan's time budget.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from freezelab.errors import LimitError, PlanError, PlanLimitError, SelectorError
from freezelab.lora import LoraSettings, Quantization, quant_from_text, rule_options, settings_from_text
from freezelab.plans import MAX_PLAN_BYTES, MAX_RULES, SCHEMA, SCHEMAS, Action, Plan, Rule
from freezelab.selectors import PLAN_BUDGET_S

_LINE = re.compile(r"^\s*(train|freeze|lora|base|adapter|quant)\s+(\S.*?)\s*$")
_INFO = {"model", "note", "trainable_params", "total_params", "adapter_params", "base_params"}  # ignored on import
_RULE_KEYS = {"action", "selector", "r", "alpha"}


def _imported_rule(action: Any, selector: str, where: str, made: int, deadline: float,
                   r: Any = None, alpha: Any = None) -> Rule:
    """One rule of an imported plan: checked (its regex compiled) within the plan's time budget."""
    if made >= MAX_RULES:
        raise PlanLimitError(f"a plan may have at most {MAX_RULES} rules, this one has more")
    if time.monotonic() > deadline:
        raise PlanLimitError(f"{where}: the plan's selectors take longer than {PLAN_BUDGET_S:g} s to compile; "
                        "simplify them or use fewer rules")
    try:
        return Rule(action, selector, r, alpha)
    except (SelectorError, PlanError) as err:
        raise (PlanLimitError if isinstance(err, LimitError) else PlanError)(f"{where}: {err}") from None


def _rules(data: dict[str, Any], version: int) -> list[Rule]:
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise PlanError("plan 'rules' must be a list")
    if len(rules) > MAX_RULES:
        raise PlanLimitError(f"a plan may have at most {MAX_RULES} rules, this one has {len(rules)}")
    parsed: list[Rule] = []
    deadline = time.monotonic() + PLAN_BUDGET_S
    for n, r in enumerate(rules, 1):
        keys = _RULE_KEYS if version >= 2 else {"action", "selector"}
        if not isinstance(r, dict) or not {"action", "selector"} <= set(r) or not set(r) <= keys:
            raise PlanError(f"plan rule {n} must be an object with 'action' and 'selector'"
                            + (" (and, for a lora rule, optional 'r' and 'alpha')" if version >= 2 else " only"))
        if not isinstance(r["selector"], str):
            raise PlanError(f"plan rule {n}: selector must be text")
        if version < 2 and r["action"] == Action.LORA:
            raise PlanError(f"plan rule {n}: lora rules need schema {SCHEMA}")
        parsed.append(_imported_rule(r["action"], r["selector"], f"plan rule {n}", len(parsed), deadline,
                                     r.get("r"), r.get("alpha")))
    return parsed


def from_dict(data: Any) -> Plan:
    if not isinstance(data, dict):
        raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema not in SCHEMAS:
        raise PlanError(f"not a freezelab plan (schema {schema!r}, expected {' or '.join(map(repr, SCHEMAS))})")
    version = SCHEMAS.index(schema) + 1
    fields = {"schema", "base", "preset", "rules"} | ({"lora", "quant"} if version >= 2 else set())
    unknown = set(data) - fields - _INFO   # model, note and the counts are written by exports, ignored here
    if unknown:
        raise PlanError(f"unknown plan field(s): {', '.join(sorted(map(str, unknown)))}")
    parsed = _rules(data, version)
    preset_name = data.get("preset")
    if preset_name is not None and not (isinstance(preset_name, str) and len(preset_name) <= 64
                                        and preset_name.isprintable()):
        raise PlanError("plan 'preset' must be null or a short name such as stage1 or last-4")
    settings = LoraSettings.from_dict(data["lora"]) if data.get("lora") is not None else LoraSettings()
    quant = Quantization.from_dict(data["quant"]) if data.get("quant") is not None else Quantization()
    return Plan(data.get("base"), tuple(parsed), preset_name, settings, quant)


def from_json(text: str | bytes) -> Plan:
    if len(text) > MAX_PLAN_BYTES:
        raise PlanLimitError(f"plan file is {len(text):,} bytes; the limit is {MAX_PLAN_BYTES:,}")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PlanError(f"plan is not valid JSON: {err}") from None
    except (ValueError, RecursionError):  # a number of thousands of digits, or nesting thousands deep
        raise PlanError("plan is not usable JSON (absurdly long numbers or deep nesting)") from None
    return from_dict(data)


def from_text(text: str) -> Plan:
    """Rules one per line (`train @projector`, `lora @llm r=16`), optional `base`, `adapter` and `quant`
    lines, `#` comment lines."""
    base, rules = None, []
    settings, quant = LoraSettings(), Quantization()
    deadline = time.monotonic() + PLAN_BUDGET_S
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise PlanError(f"line {n}: expected 'train SELECTOR', 'freeze SELECTOR', 'lora SELECTOR [r=N] "
                            "[alpha=A]', 'base frozen|trainable', 'adapter r=N alpha=A dropout=P dora=true|false' "
                            "or 'quant none|8bit|4bit'")
        word, body, where = m.group(1), m.group(2), f"line {n}"
        if word == "base":
            base = body
        elif word == "adapter":
            settings = settings_from_text(body, where)
        elif word == "quant":
            quant = quant_from_text(body, where)
        else:  # trailing r=N / alpha=A belong to the rule (only a lora rule accepts them)
            words, r, alpha = rule_options(body.split(" "), where)
            rules.append(_imported_rule(word, " ".join(words).strip(), where, len(rules), deadline, r, alpha))
    try:
        return Plan(base, tuple(rules), None, settings, quant)
    except PlanError as err:
        raise PlanError(f"plan: {err}") from None
