"""Plan panel: presets, a selector with live preview, train / freeze, undo / reset, the rule list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from freezelab.plans import PRESETS
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.handlers import View
from freezelab.ui.shared import Shared, show

SELECTOR_HELP = ("`@vision` `@projector` `@llm` `@lm_head` `@embeddings` `@all` · layer ranges "
                 "`@llm.layers[-4:]` `@vision.layers[0:12]` · globs over whole name segments "
                 "`*q_proj*` `layers.**.mlp` · regular expressions `re:layers\\.(30|31)\\.`")


def preset_help() -> str:
    return "\n".join(f"- **{p.title}** (`{p.name if p.name != 'last-n' else 'last-N'}`): {p.explanation}"
                     for p in PRESETS.values())


@dataclass
class PlanPanel:
    presets: dict[str, gr.Button]
    last_n: gr.Slider
    selector: gr.Textbox
    preview: gr.Markdown
    train: gr.Button
    freeze: gr.Button
    undo: gr.Button
    reset: gr.Button
    rules: gr.Code
    warnings: gr.Markdown

    def wire(self, sh: Shared) -> None:
        app = sh.app
        for name, button in self.presets.items():
            def on_preset(session: Session, n: float, name: str = name) -> tuple[Any, ...]:
                # n goes through as sent: NaN, None or text get the handler's message, not a crash here
                return show(lambda: handlers.apply_preset(app, session, name, 4 if n is None else n))
            button.click(on_preset, [sh.state, self.last_n], sh.outputs,
                         api_name=f"preset_{name.replace('-', '_')}")

        def on_rule(action: str) -> Any:
            def run(session: Session, selector: str) -> tuple[Any, ...]:
                return show(lambda: handlers.add_rule(app, session, action, selector))
            return run

        self.train.click(on_rule("train"), [sh.state, self.selector], sh.outputs, api_name="train")
        self.freeze.click(on_rule("freeze"), [sh.state, self.selector], sh.outputs, api_name="freeze")

        def on_preview(session: Session, selector: str) -> str:
            return handlers.preview_selector(app, session, selector)

        self.selector.change(on_preview, [sh.state, self.selector], self.preview, api_name="preview",
                             trigger_mode="always_last", show_progress="hidden")

        def on_undo(session: Session) -> tuple[Any, ...]:
            return show(lambda: handlers.undo(app, session))

        def on_reset(session: Session) -> tuple[Any, ...]:
            return show(lambda: handlers.reset(app, session))

        self.undo.click(on_undo, [sh.state], sh.outputs, api_name="undo")
        self.reset.click(on_reset, [sh.state], sh.outputs, api_name="reset")


def create_presets() -> tuple[dict[str, gr.Button], gr.Slider]:
    """The preset buttons (laid out above the tree; wired with the rest of the plan panel)."""
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
    return presets, last_n


def create_plan_panel(first: View, presets: tuple[dict[str, gr.Button], gr.Slider]) -> PlanPanel:
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
    rules = gr.Code(first.rules, label="Plan rules (applied in order, last match wins)", language=None,
                    interactive=False, lines=4, max_lines=14, elem_id="fl-rules")
    warnings = gr.Markdown(first.warnings, label="warnings", elem_id="fl-warnings")
    return PlanPanel(presets[0], presets[1], selector, preview, train, freeze, undo, reset, rules, warnings)
