"""The adapter panel's events as plain functions (no gradio): a `lora` rule from a selector with a live
preview of the Linear layers it reaches, and the plan's adapter settings and base quantization."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from freezelab import units
from freezelab.errors import PlanError, SelectorError
from freezelab.lora import LoraSettings, Quantization
from freezelab.plans import Action, append_rule, resolve
from freezelab.session import Session
from freezelab.ui.handlers import App, OptionError, View, build_view

ADAPTER_PROMPT = ("Type what gets adapters: `@llm` (every Linear of the LLM but the output head, PEFT's "
                  "all-linear), `@llm.layers[-4:]`, `*q_proj*`, `@vision`, or `re:` and a regular expression.")


def preview_adapters(app: App, session: Session, text: str) -> str:
    """What `lora SELECTOR` would add under the session's plan and settings (markdown)."""
    text = (text or "").strip()
    if not text:
        return ADAPTER_PROMPT
    index = app.loaded(session).index
    try:
        before = resolve(session.plan, index).adapters
        res = resolve(session.plan.then(Action.LORA, text), index)
    except (SelectorError, PlanError) as err:
        return f"⚠️ {err}"
    mine = [a for a in res.adapters.layers if a.rule == len(res.plan.rules)]
    added = res.adapters.params - before.params
    by_comp: dict[str, int] = {}
    for a in mine:
        comp = index.params[a.linear.weight].component
        by_comp[comp] = by_comp.get(comp, 0) + 1
    where = "; ".join(f"{c}: {n}" for c, n in by_comp.items())
    kind = "DoRA" if res.adapters.dora else "LoRA"
    return (f"Adds {kind} adapters to **{len(mine)} Linear layers** ({where}), e.g. `{mine[0].path}`: "
            f"**{units.params(added)} adapter parameters** at r={mine[0].r}, alpha={mine[0].alpha:g}.")


def add_adapters(app: App, session: Session, selector: str) -> View:
    """`lora SELECTOR` appended to the plan (AdapterError when a layer would also train in full)."""
    selector = (selector or "").strip()
    index = app.loaded(session).index
    plan = append_rule(session.plan, index, Action.LORA, selector)
    res = resolve(plan, index)
    return build_view(app, session.with_plan(plan), f"Rule added: `lora {selector}` ({len(res.adapters.layers)} "
                      f"adapted Linear layers, {units.params(res.adapters.params)} adapter parameters).")


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {value!r}") from None


def set_adapter_settings(app: App, session: Session, r: Any, alpha: Any, dropout: Any, dora: Any, quant: Any,
                         quant_type: Any, double_quant: Any) -> View:
    """The plan's LoRA settings and base quantization from the panel; a bad value changes nothing."""
    rank = _number(r, "r")
    if not rank.is_integer():
        raise OptionError(f"r must be a whole number, got {r!r}")
    alpha_value = _number(alpha, "alpha")
    settings = LoraSettings(int(rank), int(alpha_value) if alpha_value.is_integer() else alpha_value,
                            _number(dropout, "dropout"), bool(dora))
    quantization = Quantization(quant, quant_type, bool(double_quant))
    plan = replace(session.plan, lora=settings, quant=quantization)
    return build_view(app, session.with_plan(plan), f"Adapters: r={settings.r}, alpha={settings.alpha:g}, dropout "
                      f"{settings.dropout:g}{', DoRA' if settings.dora else ''}; base {quantization.describe()}.")
