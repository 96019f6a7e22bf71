"""What a result was computed for: the model, the plan and the workload, as words and as a key.

Results that take a button press (the simulated estimate, the sanity step) carry the key of the
session they ran for; the page carries the key of the current session. When the two differ the
page marks the result out of date (PAGE_JS below), so a table never silently describes a plan the
user has since changed.
"""

from __future__ import annotations

import hashlib
from html import escape

from freezelab import units
from freezelab.plans import Plan
from freezelab.session import Session
from freezelab.workload import Workload

MAX_RULES_SHOWN = 3


def workload_text(w: Workload) -> str:
    """'batch 4 × (1,024 text tokens + 1 image), bf16, adamw' and whatever else differs from a plain step."""
    images = f" + {w.images} image{'s' if w.images != 1 else ''}" if w.images else ""
    parts = [f"batch {w.batch:,} × ({w.text_tokens:,} text tokens{images})", w.dtype, w.optimizer]
    if w.autocast != "none":
        parts.append(f"autocast {w.autocast}")
    if w.grad_ckpt:
        parts.append("gradient checkpointing")
    if w.attn != "sdpa":
        parts.append(f"{w.attn} attention")
    if w.gpus > 1:
        parts.append(f"{w.gpus} GPUs ({w.sharding})")
    if w.offload_optimizer:
        parts.append("optimizer offloaded to CPU")
    return ", ".join(parts)


def plan_text(plan: Plan) -> str:
    """The plan in one line: its preset or its rules (the first few)."""
    rules = [str(r) for r in plan.rules]
    shown = "; ".join(rules[:MAX_RULES_SHOWN]) + (f" (+{len(rules) - MAX_RULES_SHOWN} more)"
                                                  if len(rules) > MAX_RULES_SHOWN else "")
    start = f"preset {plan.preset}" if plan.preset else f"base {plan.effective_base}"
    return f"{start}; {shown}" if shown else start


def session_key(session: Session) -> str:
    """Equal for two sessions exactly when a simulation or sanity step would run the same thing."""
    w = session.workload
    raw = repr((session.model, session.weights, session.plan.to_text(), sorted(w.to_dict().items())))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def describe(session: Session, trainable: int) -> str:
    """HTML: model, plan (with its trainable count) and workload."""
    return (f"<b>{escape(session.model)}</b> · plan: <code>{escape(plan_text(session.plan))}</code> "
            f"({units.params(trainable)} trainable) · {escape(workload_text(session.workload))}")


def current_html(session: Session, trainable: int) -> str:
    """The session results are compared with (shown at the top of the Verify tab)."""
    return (f'<div class="fl-now" data-fl-now="{session_key(session)}">Runs on the current plan: '
            f"{describe(session, trainable)}</div>")


def result_html(what: str, session: Session, trainable: int) -> str:
    """A result's label: what it was computed for, and a note the page shows once that is no longer current."""
    return (f'<div class="fl-for" data-fl-for="{session_key(session)}">{escape(what)} for '
            f"{describe(session, trainable)}"
            '<span class="fl-stale-note">Out of date: the model, plan or workload has changed since. '
            "Run it again for the current one.</span></div>")


# Runs in each gr.HTML that shows a key (js_on_load): whenever one of them changes, every result
# whose key differs from the current one is marked stale (class fl-stale on its group).
PAGE_JS = r"""
const mark = () => {
  const now = document.querySelector('[data-fl-now]');
  document.querySelectorAll('[data-fl-for]').forEach((label) => {
    const stale = !!now && label.dataset.flFor !== now.dataset.flNow;
    label.classList.toggle('fl-stale', stale);
    const group = label.closest('.fl-checked');
    if (group) group.classList.toggle('fl-stale', stale);
  });
};
watch('value', mark);
mark();
"""
