"""Plan panel: presets, a selector with live preview, train / freeze, undo / reset, the rule list."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.plans import PRESETS
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.handlers import View
from freezelab.ui.registry import Registry
from freezelab.ui.shared import PREVIEW_CONCURRENCY, PREVIEW_SLOTS, Shared

SELECTOR_HELP = ("`@vision` `@projector` `@llm` `@lm_head` `@embeddings` `@all` · layer ranges "
                 "`@llm.layers[-4:]` `@vision.layers[0:12]` · globs over whole name segments "
                 "`*q_proj*` `layers.**.mlp` · regular expressions `re:layers\\.(30|31)\\.`")


def preset_help() -> str:
    return "\n".join(f"- **{p.title}** (`{p.name if p.name != 'last-n' else 'last-N'}`): {p.explanation}"
                     for p in PRESETS.values())


def _wire_presets(sh: Shared) -> None:
    ui, app = sh.ui, sh.app
    for name in PRESETS:
        def on_preset(session: Session, n: float, name: str = name) -> dict[Any, Any]:
            # n goes through as sent: NaN, None or text get the handler's message, not a crash here
            return sh.show(lambda: handlers.apply_preset(app, session, name, 4 if n is None else n))
        sh.listen(ui[f"presets.{name}"].click, on_preset, [sh.state, ui["presets.n"]], sh.outputs(),
                  api_name=f"preset_{name.replace('-', '_')}")


def _wire_plan(sh: Shared) -> None:
    ui, app = sh.ui, sh.app

    def on_rule(action: str) -> Any:
        def run(session: Session, selector: str) -> dict[Any, Any]:
            return sh.show(lambda: handlers.add_rule(app, session, action, selector))
        return run

    sh.listen(ui["plan.train"].click, on_rule("train"), [sh.state, ui["plan.selector"]], sh.outputs(), api_name="train")
    sh.listen(ui["plan.freeze"].click, on_rule("freeze"), [sh.state, ui["plan.selector"]], sh.outputs(),
              api_name="freeze")

    def on_preview(session: Session, selector: str) -> str:
        try:
            sh.admit()
        except FreezelabError as err:
            return f"⚠️ {err}"
        return handlers.preview_selector(app, session, selector, sh.refused)

    ui["plan.selector"].change(on_preview, [sh.state, ui["plan.selector"]], ui["plan.preview"], api_name="preview",
                               trigger_mode="always_last", show_progress="hidden",
                               concurrency_id=PREVIEW_CONCURRENCY, concurrency_limit=PREVIEW_SLOTS)

    def on_undo(session: Session) -> dict[Any, Any]:
        return sh.show(lambda: handlers.undo(app, session))

    def on_reset(session: Session) -> dict[Any, Any]:
        return sh.show(lambda: handlers.reset(app, session))

    sh.listen(ui["plan.undo"].click, on_undo, [sh.state], sh.outputs(), api_name="undo")
    sh.listen(ui["plan.reset"].click, on_reset, [sh.state], sh.outputs(), api_name="reset")


def create_presets(ui: Registry) -> None:
    """The preset buttons with their N, laid out above the tree."""
    gr.Markdown("### Plan")
    presets: dict[str, gr.Button] = {}
    names = list(PRESETS)
    for row in (names[:4], names[4:]):
        with gr.Row(elem_classes="fl-presets"):
            for name in row:
                label = PRESETS[name].title if name != "last-n" else "Last N layers"
                presets[name] = gr.Button(label, size="sm", elem_id=f"fl-preset-{name}", min_width=60)
    last_n = gr.Slider(1, 80, value=4, step=1, label="N for 'Last N layers'")
    with gr.Accordion("What each preset does", open=False):
        gr.Markdown(preset_help())
    ui.add("presets", {**presets, "n": last_n}, wire=_wire_presets)


def create_plan_panel(ui: Registry, first: View) -> None:
    """The selector, its preview, train / freeze / undo / reset and the rule list, below the tree."""
    gr.Markdown("### Selector and rules")
    selector = gr.Textbox(label="Selector", placeholder="@llm.layers[-4:]", elem_id="fl-selector",
                          info="what to train or freeze; the preview below updates as you type")
    preview = gr.Markdown(handlers.SELECTOR_PROMPT, label="preview", elem_id="fl-preview")
    with gr.Row():
        train = gr.Button("Train it", variant="primary", size="sm")
        freeze = gr.Button("Freeze it", size="sm")
        undo = gr.Button("Undo", size="sm")
        reset = gr.Button("Reset", size="sm")
    with gr.Accordion("Selector syntax", open=False):
        gr.Markdown(SELECTOR_HELP)
    rules = gr.Code(first.rules, label="Plan rules (last match wins)", language=None,
                    interactive=False, lines=4, max_lines=14, elem_id="fl-rules")
    warnings = gr.Markdown(first.warnings, label="warnings", elem_id="fl-warnings")
    ui.add("plan", {"selector": selector, "preview": preview, "train": train, "freeze": freeze, "undo": undo,
                    "reset": reset, "rules": rules, "warnings": warnings}, wire=_wire_plan)
