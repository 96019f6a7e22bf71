"""Counts panel: the trainable total, the per-component table and the parameter charts."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from freezelab.ui.handlers import View


@dataclass
class SummaryPanel:
    summary: gr.HTML
    params_plot: gr.Plot


def create_summary_panel(first: View) -> SummaryPanel:
    summary = gr.HTML(first.summary, label="counts", elem_id="fl-summary", js_on_load=None)
    params_plot = gr.Plot(first.params_fig, label="parameters per component", show_label=False,
                          elem_id="fl-params-plot")
    return SummaryPanel(summary, params_plot)


def create_map_panel(first: View) -> gr.Plot:
    """The model map (treemap), placed under the memory charts."""
    return gr.Plot(first.map_fig, label="model map", show_label=False, elem_id="fl-map-plot")
