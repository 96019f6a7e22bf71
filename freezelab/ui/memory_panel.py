"""Workload controls and the live memory estimate: verdict, breakdown, why, memory vs batch size."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.handlers import View
from freezelab.ui.memory_view import FIELDS, MEMORY, WORKLOAD_IDS, control_value, workload_shown
from freezelab.ui.registry import Registry, elem_id, shown_values
from freezelab.ui.shared import Shared
from freezelab.ui.uploads import accept_uploads_only
from freezelab.workload import ATTENTION, AUTOCAST, DTYPES, OPTIMIZERS, SHARDING


def _wire(sh: Shared) -> None:
    controls = sh.ui.components(WORKLOAD_IDS)
    inputs = [sh.state, *controls]

    def on_change(session: Session, *values: Any) -> dict[Any, Any]:
        return sh.show(lambda: handlers.set_workload(sh.app, session, **dict(zip(FIELDS, values))))

    for name, control in zip(FIELDS, controls):
        if name == "image_sizes":  # text: read when complete (Enter or leaving the box), not per keystroke
            for event in (control.submit, control.blur):
                event(on_change, inputs, sh.outputs(), show_progress="hidden", api_visibility="private")
            continue
        control.input(on_change, inputs, sh.outputs(), show_progress="hidden",
                      api_name="set_workload" if name == "batch" else None,
                      api_visibility="public" if name == "batch" else "private")

    def on_image(session: Session, path: str | None) -> dict[Any, Any]:
        if not path:  # the image was cleared: the sizes box keeps what it says
            return sh.show(lambda: handlers.build_view(sh.app, session))

        def dropped() -> dict[str, Any]:
            view = handlers.set_image(sh.app, session, path)
            return {**shown_values(view), **workload_shown(view.session.workload)}
        return sh.show(dropped)

    sh.ui[elem_id(MEMORY, "image")].upload(on_image, [sh.state, sh.ui[elem_id(MEMORY, "image")]],
                                           sh.outputs(*WORKLOAD_IDS), api_name="set_image")


def create_memory_panel(ui: Registry, first: View) -> None:
    # Numbers carry no minimum/maximum: out-of-range values reach Workload, whose message says why.
    w = first.session.workload
    gr.Markdown("### Training step and GPU memory")
    with gr.Accordion("Workload (per GPU)", open=True):
        with gr.Row():
            c: dict[str, Any] = {
                "batch": gr.Number(w.batch, label="batch", precision=0, min_width=80),
                "text_tokens": gr.Number(w.text_tokens, label="text tokens / sample", precision=0, min_width=110),
                "images": gr.Number(w.images, label="images / sample", precision=0, min_width=90),
                "dtype": gr.Dropdown(list(DTYPES), value=w.dtype, label="weights dtype", min_width=90),
                "autocast": gr.Dropdown(list(AUTOCAST), value=w.autocast, label="autocast", min_width=90),
                "optimizer": gr.Dropdown(list(OPTIMIZERS), value=w.optimizer, label="optimizer", min_width=120),
            }
        with gr.Row():
            c["grad_ckpt"] = gr.Checkbox(w.grad_ckpt, label="gradient checkpointing", min_width=100)
            c["attn"] = gr.Dropdown(list(ATTENTION), value=w.attn, label="attention", min_width=90)
            c["gpus"] = gr.Number(w.gpus, label="GPUs", precision=0, min_width=80)
            c["sharding"] = gr.Dropdown(list(SHARDING), value=w.sharding, label="sharding", min_width=90)
            c["offload_optimizer"] = gr.Checkbox(w.offload_optimizer, label="offload optimizer to CPU",
                                                 min_width=100)
    with gr.Accordion("Images: sizes and token layout", open=False):
        with gr.Row():
            c["image_sizes"] = gr.Textbox(control_value(w, "image_sizes"), label="image sizes (height x width)",
                                          placeholder="native size; e.g. 336x672, or 336x672, 672x672 for two "
                                          "images of different sizes", max_lines=1, min_width=200,
                                          elem_id="fl-image-sizes")
            c["frames"] = gr.Number(w.frames, label="video frames / sample", precision=0, min_width=90)
            image = accept_uploads_only(gr.Image(label="or drop an image (its size is used)", type="filepath",
                                                 sources=["upload"], height=140, min_width=160))
        tokens = gr.Markdown(first.memory.tokens, label="token layout", elem_id="fl-tokens")
    verdict = gr.HTML(first.memory.verdict, label="verdict", elem_id="fl-verdict-box", js_on_load=None)
    plot = gr.Plot(first.memory.figure, label="memory breakdown", show_label=False, elem_id="fl-memory-plot")
    gr.Markdown("**Why the memory goes where it goes**")
    notes = gr.Markdown(first.memory.notes, label="why", elem_id="fl-notes")
    curve = gr.Plot(first.memory.curve, label="memory vs batch size", show_label=False, elem_id="fl-curve-plot")
    ui.add(MEMORY, {**c, "verdict": verdict, "plot": plot, "notes": notes, "curve": curve, "tokens": tokens,
                    "image": image}, wire=_wire)
