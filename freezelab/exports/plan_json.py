"""Export target: the plan as freezelab plan JSON (schema freezelab.plan/2), plus import.

The export adds informational fields that import accepts and ignores: the
model it was made for and the trainable / total counts there, so a reader can
check a plan file against `inspect` without running anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from freezelab.adapters import Adapters
from freezelab.errors import PlanError, PlanLimitError
from freezelab.exports.adapted import counts_line as adapter_counts
from freezelab.exports.base import Export, counts_line
from freezelab.index import ModelIndex
from freezelab.plan_files import from_dict, from_text
from freezelab.plans import MAX_PLAN_BYTES, Plan

INFO_COUNTS = ("trainable_params", "total_params", "adapter_params", "base_params")


def document(plan: Plan, index: ModelIndex, mask: Sequence[bool], adapters: Adapters | None = None) -> dict[str, Any]:
    data = plan.to_dict()
    extra = adapters.params if adapters is not None else 0
    trainable = sum(n for n, on in zip(index.numels, mask) if on) + extra
    line = counts_line(index, mask) if not extra else adapter_counts(index, mask, adapters)
    return {"schema": data["schema"], "model": index.name, "base": data["base"], "preset": data["preset"],
            "rules": data["rules"], "lora": data["lora"], "quant": data["quant"], "trainable_params": trainable,
            "total_params": index.total_params + extra, "adapter_params": extra, "base_params": index.total_params,
            "note": f"on {index.name} ({index.model_class}, transformers {index.transformers_version}) this plan "
                    f"{line}"}


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool], adapters: Adapters | None = None) -> Export:
    text = json.dumps(document(plan, index, mask, adapters), indent=2, ensure_ascii=False) + "\n"
    line = counts_line(index, mask) if adapters is None or not adapters.params else \
        adapter_counts(index, mask, adapters)
    return Export("json", text, True, f"freezelab plan JSON; {line} of {index.name}", language="json")


def _check_info(data: Any) -> None:
    if not isinstance(data, dict):
        return  # from_dict names the real problem
    for key in INFO_COUNTS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise PlanError(f"plan '{key}' must be a non-negative whole number, got {value!r}")
    for key in ("model", "note"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise PlanError(f"plan '{key}' must be text")


def _decode(text: str | bytes) -> str:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanLimitError(f"the plan is {len(raw):,} bytes; the limit is {MAX_PLAN_BYTES:,}")
    try:
        out = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError("the plan is not UTF-8 text") from None
    if "\x00" in out:
        raise PlanError("the plan is binary data, not text")
    return out.removeprefix("\ufeff")


def import_plan(text: str | bytes) -> Plan:
    """A plan from freezelab plan JSON or the rule-per-line text format (`train @projector`,
    `freeze SEL`, optional `base frozen|trainable`, `#` comments); at most MAX_PLAN_BYTES."""
    body = _decode(text)
    stripped = body.strip()
    if not stripped:
        raise PlanError("the plan is empty")
    if stripped[0] in "{[":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise PlanError(f"plan is not valid JSON: {err}") from None
        except (ValueError, RecursionError):  # a number of thousands of digits, or nesting thousands deep
            raise PlanError("plan is not usable JSON (absurdly long numbers or deep nesting)") from None
        _check_info(data)
        return from_dict(data)
    lines = [ln.strip() for ln in body.splitlines()]
    if not any(ln and not ln.startswith("#") for ln in lines):
        raise PlanError("the plan has only comments: no rule and no base line")
    return from_text(body)
