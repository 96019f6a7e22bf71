"""Adapter panel: a target selector with a live preview, `lora` rules, and the plan's LoRA / DoRA settings
and base quantization."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.lora import QUANT_BITS, QUANT_TYPES
from freezelab.session import Session
from freezelab.ui import adapter_view
from freezelab.ui.handlers import View
from freezelab.ui.registry import Registry
from freezelab.ui.shared import Shared

PANEL = "adapter"
SETTINGS = ("r", "alpha", "dropout", "dora", "quant", "quant_type", "double_quant")
ADAPTER_HELP = (
    "A `lora` rule puts a LoRA adapter (PEFT) on every `nn.Linear` whose weight the selector reaches; the "
    "base weight stays frozen and only the adapter's A (r x in) and B (out x r) train, with DoRA also a "
    "magnitude per output. `@llm` leaves out the output head, as PEFT's `all-linear` does (`@lm_head` names "
    "it). A layer that trains in full cannot also get an adapter. The adapters still keep activations: each "
    "keeps its input for A's gradient, even where the frozen Linear beside it keeps nothing. A quantized base "
    "(QLoRA) stores the LLM's frozen Linear weights in 4 or 8 bits (bitsandbytes, CUDA only).")


def _wire(sh: Shared) -> None:
    ui, app = sh.ui, sh.app

    def on_preview(session: Session, selector: str) -> str:
        return adapter_view.preview_adapters(app, session, selector)

    ui["adapter.selector"].change(on_preview, [sh.state, ui["adapter.selector"]], ui["adapter.preview"],
                                  api_name="preview_adapters", trigger_mode="always_last", show_progress="hidden")

    def on_add(session: Session, selector: str) -> dict[Any, Any]:
        return sh.show(lambda: adapter_view.add_adapters(app, session, selector))

    ui["adapter.add"].click(on_add, [sh.state, ui["adapter.selector"]], sh.outputs(), api_name="add_adapters")
    controls = [ui[f"adapter.{name}"] for name in SETTINGS]

    def on_settings(session: Session, *values: Any) -> dict[Any, Any]:
        return sh.show(lambda: adapter_view.set_adapter_settings(app, session, *values))

    for name, control in zip(SETTINGS, controls):
        control.input(on_settings, [sh.state, *controls], sh.outputs(), show_progress="hidden",
                      api_name="set_adapters" if name == "r" else None,
                      api_visibility="public" if name == "r" else "private")


def create_adapter_panel(ui: Registry, first: View) -> None:
    plan = first.session.plan
    s, q = plan.lora, plan.quant
    gr.Markdown("### Adapters (LoRA, DoRA, QLoRA)")
    selector = gr.Textbox(label="Adapter target", placeholder="@llm", elem_id="fl-adapter-selector",
                          info="which Linear layers get adapters; the preview below updates as you type")
    preview = gr.Markdown(adapter_view.ADAPTER_PROMPT, label="preview", elem_id="fl-adapter-preview")
    add = gr.Button("Add adapters", size="sm", variant="primary")
    with gr.Row():
        c: dict[str, Any] = {
            "r": gr.Number(s.r, label="r", precision=0, min_width=70),
            "alpha": gr.Number(s.alpha, label="alpha", min_width=70),
            "dropout": gr.Number(s.dropout, label="dropout", min_width=80),
            "dora": gr.Checkbox(s.dora, label="DoRA", min_width=70),
        }
    with gr.Row():
        c["quant"] = gr.Dropdown(list(QUANT_BITS), value=q.bits.value, label="quantized base", min_width=140)
        c["quant_type"] = gr.Dropdown(list(QUANT_TYPES), value=q.quant_type.value, label="4-bit type", min_width=110)
    c["double_quant"] = gr.Checkbox(q.double_quant, label="double quantization (4-bit)")
    with gr.Accordion("What adapters do", open=False):
        gr.Markdown(ADAPTER_HELP)
    ui.add(PANEL, {"selector": selector, "preview": preview, "add": add, **c}, wire=_wire)
