"""Counts panel: the trainable total, the per-component table and the parameter charts."""

from __future__ import annotations

import gradio as gr

from freezelab.ui.handlers import View
from freezelab.ui.registry import Registry


def create_summary_panel(ui: Registry, first: View) -> None:
    summary = gr.HTML(first.summary, label="counts", elem_id="fl-summary", js_on_load=None)
    params_plot = gr.Plot(first.params_fig, label="parameters per component", show_label=False,
                          elem_id="fl-params-plot")
    ui.add("summary", {"counts": summary, "params_plot": params_plot})


def create_map_panel(ui: Registry, first: View) -> None:
    """The model map (treemap), placed under the memory charts."""
    ui.add("map", {"plot": gr.Plot(first.map_fig, label="model map", show_label=False, elem_id="fl-map-plot")})
