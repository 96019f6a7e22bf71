"""Module tree panel: the whole hierarchy with tri-state freeze checkboxes, a filter and a depth limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.handlers import View
from freezelab.ui.shared import Shared, show
from freezelab.ui.tree_view import TREE_JS, TREE_TEMPLATE

DEPTHS = ["all", *map(str, range(1, 9))]
LEGEND = ("Tick or untick a module to train or freeze its whole subtree (a dash means partly trainable). "
          "&#8599; puts the module into the selector box. Counts are trainable / total parameters.")


@dataclass
class TreePanel:
    query: gr.Textbox
    depth: gr.Dropdown
    tree: gr.HTML

    def wire(self, sh: Shared, selector: gr.Textbox, preview: gr.Markdown) -> None:
        app = sh.app

        def on_toggle(session: Session, evt: gr.EventData) -> tuple[Any, ...]:
            return show(lambda: handlers.toggle_module(app, session, _field(evt, "module"), _field(evt, "on") is True))

        def on_pick(session: Session, evt: gr.EventData) -> tuple[Any, Any]:
            try:
                return handlers.pick_module(app, session, _field(evt, "module"))
            except FreezelabError as err:
                return gr.skip(), f"⚠️ {err}"

        def on_options(session: Session, query: str, depth: str) -> tuple[Any, ...]:
            return show(lambda: handlers.set_tree_options(app, session, query, None if depth == "all" else depth))

        self.tree.module_toggle(on_toggle, [sh.state], sh.outputs, api_visibility="private",
                                show_progress="hidden")
        self.tree.module_pick(on_pick, [sh.state], [selector, preview], api_visibility="private",
                              show_progress="hidden")
        self.query.change(on_options, [sh.state, self.query, self.depth], sh.outputs, api_name="filter_tree",
                          trigger_mode="always_last", show_progress="hidden")
        self.depth.input(on_options, [sh.state, self.query, self.depth], sh.outputs, api_visibility="private")


def _field(evt: gr.EventData, name: str) -> Any:
    """A field of the tree's event data, or None: the data comes from the browser, so it may be anything."""
    try:
        return getattr(evt, name)
    except (AttributeError, TypeError):
        return None


def create_tree_panel(first: View) -> TreePanel:
    gr.Markdown("### Module tree")
    with gr.Row():
        query = gr.Textbox(label="Filter", placeholder="q_proj, layers.31, LayerNorm", scale=3,
                           elem_id="fl-tree-filter")
        depth = gr.Dropdown(DEPTHS, value="all", label="Depth", scale=1, min_width=90)
    gr.Markdown(f"<small>{LEGEND}</small>")
    tree = gr.HTML(first.tree, label="module tree (JSON rows)", html_template=TREE_TEMPLATE, js_on_load=TREE_JS,
                   elem_id="fl-tree-box", apply_default_css=False, max_height=640)
    return TreePanel(query, depth, tree)
