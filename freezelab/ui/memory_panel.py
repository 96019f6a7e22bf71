"""Workload controls and the live memory estimate: verdict, breakdown, why, memory vs batch size, and how
many GPUs of each card the step needs under each sharding mode.

Everything computed from the workload sits in a column with the class `fl-results`: while a
workload value is refused, the page marks every such column out of date (style.CSS), so a panel
added later (a compute bar beside the memory stack, GPU-count charts) only has to sit in one.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.handlers import WORKLOAD_PARTS, View
from freezelab.ui.memory_view import (
    FIELDS,
    LABELS,
    MEMORY,
    RESULTS,
    WORKLOAD_IDS,
    control_id,
    control_value,
    workload_shown,
)
from freezelab.ui.registry import Registry, elem_id, initial, shown_values
from freezelab.ui.shared import Shared
from freezelab.ui.uploads import accept_uploads_only
from freezelab.workload import ATTENTION, AUTOCAST, DTYPES, OPTIMIZERS, SHARDING

# A refused value's message sits under the controls; when that is below the fold, the page scrolls
# just enough to show it (the control being typed in stays in view: the grid is shorter than a screen).
SHOW_ERROR_JS = "watch('value', () => element.querySelector('.fl-field-error')?.scrollIntoView({block: 'nearest'}));"


def _wire(sh: Shared) -> None:
    controls = sh.ui.components(WORKLOAD_IDS)
    inputs = [sh.state, *controls]

    def on_change(session: Session, *values: Any) -> dict[Any, Any]:
        return sh.show(lambda: handlers.edit_workload(sh.app, session, **dict(zip(FIELDS, values))))

    for name, control in zip(FIELDS, controls):
        if name == "image_sizes":  # text: read when complete (Enter or leaving the box), not per keystroke
            for event in (control.submit, control.blur):
                event(on_change, inputs, sh.outputs(parts=WORKLOAD_PARTS), show_progress="hidden",
                      api_visibility="private")
            continue
        sh.listen(control.input, on_change, inputs, sh.outputs(parts=WORKLOAD_PARTS), show_progress="hidden",
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

    def on_context(session: Session, on: bool) -> dict[Any, Any]:
        return sh.show(lambda: handlers.set_context(sh.app, session, on))

    sh.ui["memory.context"].input(on_context, [sh.state, sh.ui["memory.context"]], sh.outputs(parts=WORKLOAD_PARTS),
                                  show_progress="hidden", api_visibility="private")

    def on_gpu_count(on: bool) -> Any:
        def handler(session: Session) -> dict[Any, Any]:
            return sh.show(lambda: handlers.show_gpu_count(sh.app, session, on))
        return handler

    section = sh.ui["memory.gpu_section"]
    section.expand(on_gpu_count(True), [sh.state], sh.outputs(parts=WORKLOAD_PARTS), show_progress="hidden",
                   api_name="show_gpu_count")
    section.collapse(on_gpu_count(False), [sh.state], sh.outputs(parts=WORKLOAD_PARTS), show_progress="hidden",
                     api_visibility="private")


def _controls(first: View) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload controls, in the order they are laid out: a grid (as many per row as fit), then
    the two ticks side by side."""
    w = first.session.workload

    def number(name: str) -> gr.Number:
        return gr.Number(getattr(w, name), label=LABELS[name], precision=0, elem_id=control_id(name))

    def menu(name: str, choices: tuple[str, ...]) -> gr.Dropdown:
        return gr.Dropdown(list(choices), value=getattr(w, name), label=LABELS[name], elem_id=control_id(name))

    def tick(name: str, label: str) -> gr.Checkbox:
        return gr.Checkbox(getattr(w, name), label=label, elem_id=control_id(name))

    # Numbers carry no minimum/maximum: out-of-range values reach Workload, whose message says why.
    with gr.Row(elem_classes="fl-workload-grid"):
        grid = {"batch": number("batch"), "text_tokens": number("text_tokens"), "images": number("images"),
                "dtype": menu("dtype", DTYPES), "autocast": menu("autocast", AUTOCAST),
                "optimizer": menu("optimizer", OPTIMIZERS), "attn": menu("attn", ATTENTION), "gpus": number("gpus"),
                "sharding": menu("sharding", SHARDING)}
    with gr.Row(elem_classes="fl-workload-ticks"):
        ticks = {"grad_ckpt": tick("grad_ckpt", "gradient checkpointing"),
                 "offload_optimizer": tick("offload_optimizer", "offload optimizer to CPU")}
    return grid, ticks


def create_memory_panel(ui: Registry, first: View) -> None:
    gr.Markdown("### Training step and GPU memory")
    with gr.Accordion("Workload per GPU (tokens and images per sample)", open=True, elem_id="fl-workload"):
        grid, ticks = _controls(first)
        error = gr.HTML(first.memory.error, elem_id="fl-workload-error", js_on_load=SHOW_ERROR_JS)
    images, tokens, image = _image_controls(first)
    with gr.Column(elem_classes=RESULTS, elem_id="fl-memory-results"):
        verdict = gr.HTML(first.memory.verdict, label="verdict", elem_id="fl-verdict-box", js_on_load=None)
        context = gr.Checkbox(first.memory.context, label="CUDA context and allocator cache in the charts",
                              elem_id="fl-context")
        plot = gr.Plot(first.memory.figure, label="memory breakdown", show_label=False, elem_id="fl-memory-plot")
        gr.Markdown("**Why the memory goes where it goes**")
        notes = gr.Markdown(first.memory.notes, label="why", elem_id="fl-notes")
        curve = gr.Plot(first.memory.curve, label="memory vs batch size", show_label=False, elem_id="fl-curve-plot")
        # closed at first: a class that never opens it never pays for it (twenty walks of the step per change)
        with gr.Accordion("How many GPUs", open=first.session.gpu_count, elem_id="fl-gpu-count") as gpu_section:
            min_gpus = gr.Markdown(initial(first.memory.min_gpus), elem_id="fl-min-gpus")
            gpu_count = gr.Plot(initial(first.memory.gpu_count), label="memory per GPU vs number of GPUs", show_label=False,
                                elem_id="fl-gpu-count-plot")
    ui.add(MEMORY, {**grid, **ticks, **images, "verdict": verdict, "plot": plot, "notes": notes, "curve": curve,
                    "context": context, "error": error, "min_gpus": min_gpus, "gpu_count": gpu_count,
                    "tokens": tokens, "image": image, "gpu_section": gpu_section}, wire=_wire)


def _image_controls(first: View) -> tuple[dict[str, Any], gr.Markdown, gr.Image]:
    """Image sizes (text: "336x672, 672x672"), video frames, a dropped image, and the token layout."""
    w = first.session.workload
    with gr.Accordion("Images: sizes and token layout", open=False, elem_id="fl-images"):
        with gr.Row():
            sizes = gr.Textbox(control_value(w, "image_sizes"), label="image sizes (height x width)",
                               placeholder="native size; e.g. 336x672, or 336x672, 672x672 for two "
                               "images of different sizes", max_lines=1, min_width=200,
                               elem_id=control_id("image_sizes"))
            frames = gr.Number(w.frames, label=LABELS["frames"], precision=0, min_width=90,
                               elem_id=control_id("frames"))
            image = accept_uploads_only(gr.Image(label="or drop an image (its size is used)", type="filepath",
                                                 sources=["upload"], height=140, min_width=160))
        tokens = gr.Markdown(first.memory.tokens, label="token layout", elem_id="fl-tokens")
    return {"image_sizes": sizes, "frames": frames}, tokens, image
