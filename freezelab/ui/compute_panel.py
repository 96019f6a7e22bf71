"""What a step costs in compute and time: the FLOPs chart, the step time per GPU and the time
model's efficiency controls."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.compute_view import COMPUTE, EFFICIENCY_FIELDS, EFFICIENCY_IDS
from freezelab.ui.handlers import COMPUTE_PARTS, View
from freezelab.ui.registry import Registry
from freezelab.ui.shared import Shared


def _wire(sh: Shared) -> None:
    controls = sh.ui.components(EFFICIENCY_IDS)
    inputs = [sh.state, *controls]

    def on_change(session: Session, *values: Any) -> dict[Any, Any]:
        return sh.show(lambda: handlers.set_efficiency(sh.app, session, **dict(zip(EFFICIENCY_FIELDS, values))))

    for control in controls:
        control.input(on_change, inputs, sh.outputs(parts=COMPUTE_PARTS), show_progress="hidden",
                      api_visibility="private")


def create_compute_panel(ui: Registry, first: View) -> None:
    eff = first.session.efficiency
    gr.Markdown("### Compute and time per step")
    with gr.Row():
        mfu = gr.Number(eff.mfu, label="matmul MFU", min_width=120)
        bandwidth = gr.Number(eff.bandwidth, label="bandwidth efficiency", min_width=120)
    plot = gr.Plot(first.compute.figure, label="compute per component", show_label=False, elem_id="fl-compute-plot")
    time = gr.Markdown(first.compute.time, label="step time", elem_id="fl-step-time")
    ui.add(COMPUTE, {"mfu": mfu, "bandwidth": bandwidth, "plot": plot, "time": time}, wire=_wire)
