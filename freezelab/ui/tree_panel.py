"""Module tree panel: the whole hierarchy with tri-state freeze checkboxes, a filter and a depth limit."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.handlers import View
from freezelab.ui.registry import Registry
from freezelab.ui.shared import Shared
from freezelab.ui.tree_view import TREE_JS, TREE_TEMPLATE

DEPTHS = ["all", *map(str, range(1, 9))]
LEGEND = ("Tick or untick a module to train or freeze its whole subtree (a dash means partly trainable). "
          "&#8599; puts the module into the selector box. Counts are trainable / total parameters.")


def _wire(sh: Shared) -> None:
    ui, app = sh.ui, sh.app
    options = [sh.state, ui["tree.query"], ui["tree.depth"]]

    def on_toggle(session: Session, evt: gr.EventData) -> dict[Any, Any]:
        return sh.show(lambda: handlers.toggle_module(app, session, _field(evt, "module"), _field(evt, "on") is True))

    def on_pick(session: Session, evt: gr.EventData) -> dict[Any, Any]:
        try:
            selector, preview = handlers.pick_module(app, session, _field(evt, "module"))
        except FreezelabError as err:
            return ui.values({"plan.preview": f"⚠️ {err}"})
        return ui.values({"plan.selector": selector, "plan.preview": preview})

    def on_options(session: Session, query: str, depth: str) -> dict[Any, Any]:
        return sh.show(lambda: handlers.set_tree_options(app, session, query, None if depth == "all" else depth))

    tree = ui["tree.tree"]
    sh.listen(tree.module_toggle, on_toggle, [sh.state], sh.outputs(), api_visibility="private",
              show_progress="hidden")
    tree.module_pick(on_pick, [sh.state], ui.components(("plan.selector", "plan.preview")),
                     api_visibility="private", show_progress="hidden")
    ui["tree.query"].change(on_options, options, sh.outputs(), api_name="filter_tree", trigger_mode="always_last",
                            show_progress="hidden")
    ui["tree.depth"].input(on_options, options, sh.outputs(), api_visibility="private")


def _field(evt: gr.EventData, name: str) -> Any:
    """A field of the tree's event data, or None: the data comes from the browser, so it may be anything."""
    try:
        return getattr(evt, name)
    except (AttributeError, TypeError):
        return None


def create_tree_panel(ui: Registry, first: View) -> None:
    gr.Markdown("### Module tree")
    with gr.Row():
        query = gr.Textbox(label="Filter", placeholder="q_proj, layers.31, LayerNorm", scale=3,
                           elem_id="fl-tree-filter")
        depth = gr.Dropdown(DEPTHS, value="all", label="Depth", scale=1, min_width=90)
    gr.Markdown(f"<small>{LEGEND}</small>")
    tree = gr.HTML(first.tree, label="module tree (JSON rows)", html_template=TREE_TEMPLATE, js_on_load=TREE_JS,
                   elem_id="fl-tree-box", apply_default_css=False, max_height=640)
    ui.add("tree", {"query": query, "depth": depth, "tree": tree}, wire=_wire)
