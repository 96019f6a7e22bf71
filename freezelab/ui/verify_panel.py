"""Verify tab: the simulated memory estimate and the sanity step, one at a time per process.

A run waits for the one device slot (Gradio's concurrency group), so whatever would refuse it is
checked before it joins that queue: each run event has a Gradio validator, which answers at once
with the reason when a check fails (an API client gets it as the request's error), and the button
first runs the same checks outside the queue so that the page shows the reason where the result
would go. A refused request never waits behind a running one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.reclaim import trim_heap_soon
from freezelab.session import Session
from freezelab.ui import verify_view
from freezelab.ui.context_view import PAGE_JS
from freezelab.ui.handlers import View
from freezelab.ui.registry import Registry, shown_ids, shown_values
from freezelab.ui.shared import GPU_CONCURRENCY, Shared, error_text, warn
from freezelab.ui.verify_view import CHECK_HEADERS, Cancels, SimulationView, StepView, check_simulation, check_step

CANCELS = Cancels()


def session_release(sh: Shared) -> Callable[[gr.Request], None]:
    """The page's unload handler."""

    def release_session(request: gr.Request) -> None:
        """When a browser session ends (tab closed: Gradio's heartbeat stops), stop its simulation or
        sanity step: the run notices within a module of its forward or backward and frees everything it
        allocated. A run still queued is dropped by Gradio itself; the session's gr.State goes with
        Gradio's session cleanup, at once for a session the throttle paused (Shared.forget_paused).
        The heap its requests freed goes back to the system soon after."""
        client = request.session_hash or "anonymous"
        CANCELS.cancel(client)
        sh.forget_paused(client)
        trim_heap_soon()

    return release_session


def step_devices(allowed: tuple[str, ...] | None) -> list[str]:
    """cpu, and cuda when torch sees a GPU and this deployment allows it."""
    import torch

    found = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [d for d in found if allowed is None or d in allowed] or ["cpu"]


def refusal(check: Any) -> str | None:
    """The message of a check that refuses a run, or None when it passes."""
    try:
        check()
    except FreezelabError as err:
        return str(err)
    return None


def _wire_simulate(sh: Shared) -> None:
    ui = sh.ui

    def validate(session: Session) -> dict[str, Any]:
        why = sh.refusal(lambda: check_simulation(sh.app, session))
        return gr.validate(why is None, why or "")

    def on_check(session: Session) -> dict[Any, Any]:
        why = refusal(lambda: check_simulation(sh.app, session))
        if why is None:
            return ui.values({"simulate.table": "Waiting for the simulation slot…"})
        return ui.values({"simulate.table": error_text(why), "simulate.plot": None, "simulate.for": ""})

    def on_run(session: Session, request: gr.Request, progress=gr.Progress()) -> dict[Any, Any]:
        key = request.session_hash or "anonymous"
        flag = CANCELS.start(key)
        try:
            view = verify_view.simulate(sh.app, session, lambda f, m: progress(f, desc=m), flag.is_set)
        except FreezelabError as err:
            warn(err)
            # what an earlier run left would read as this run's result: cleared
            return ui.values({"simulate.table": error_text(err), "simulate.plot": None, "simulate.for": ""})
        finally:
            CANCELS.finish(key, flag)
        return ui.values(shown_values(view))

    def on_cancel(request: gr.Request) -> None:
        CANCELS.cancel(request.session_hash or "anonymous")

    outputs = ui.components(shown_ids(SimulationView))
    checked = ui["simulate.run"].click(on_check, [sh.state], outputs, queue=False, api_visibility="private",
                                       show_progress="hidden")
    checked.then(on_run, [sh.state], outputs, api_name="simulate", validator=validate,
                 concurrency_id=GPU_CONCURRENCY, concurrency_limit=1)
    ui["simulate.cancel"].click(on_cancel, None, None, api_visibility="private", queue=False)


def result_label(elem_id: str) -> gr.HTML:
    """What a result was computed for; marks its group (class fl-checked) stale once the plan changes."""
    return gr.HTML("", elem_id=elem_id, js_on_load=PAGE_JS, apply_default_css=False)


def create_verify_header(ui: Registry, first: View) -> None:
    """The plan and workload the buttons below run on (the key results are compared with)."""
    now = gr.HTML(first.current, elem_id="fl-verify-now", js_on_load=PAGE_JS, apply_default_css=False)
    ui.add("verify", {"now": now})


def create_simulate_panel(ui: Registry) -> None:
    gr.Markdown("### Simulated estimate\nRuns the real Hugging Face training step (two steps, AdamW) on fake "
                "tensors: no GPU and no weights needed, and it catches what a formula can miss. Takes a few "
                "seconds for a small model and about ten seconds for a 7B one.")
    with gr.Row():
        run = gr.Button("Simulate the training step", variant="primary")
        cancel = gr.Button("Cancel")
    with gr.Column(elem_classes="fl-checked"):
        label = result_label("fl-sim-for")
        table = gr.Markdown(elem_id="fl-sim-table", elem_classes="fl-result")
        plot = gr.Plot(show_label=False, elem_classes="fl-result", elem_id="fl-sim-plot")
    ui.add("simulate", {"run": run, "cancel": cancel, "table": table, "plot": plot, "for": label},
           wire=_wire_simulate)


def _wire_step(sh: Shared) -> None:
    ui = sh.ui

    def on_page_load() -> Any:
        # Importing torch costs seconds: it happens once the page is up, not while the app starts.
        return gr.update(choices=step_devices(sh.app.policy.step_devices))

    sh.demo.load(on_page_load, None, ui["step.device"], api_visibility="private", show_progress="hidden")

    def validate(session: Session, device: str, steps: float, lr: float) -> list[dict[str, Any]]:
        why = sh.refusal(lambda: check_step(sh.app, session, device, steps, lr))
        # shown under the steps box on the page (a gr.State shows nothing)
        return [gr.validate(True, ""), gr.validate(True, ""), gr.validate(why is None, why or ""),
                gr.validate(True, "")]

    def on_check(session: Session, device: str, steps: float, lr: float) -> dict[Any, Any]:
        why = refusal(lambda: check_step(sh.app, session, device, steps, lr))
        if why is None:
            return ui.values({"step.status": "Waiting for the sanity step slot…"})
        return ui.values({"step.status": error_text(why), "step.loss": None, "step.grads": None,
                          "step.checks": None, "step.memory": "", "step.for": ""})

    def on_run(session: Session, device: str, steps: float, lr: float, request: gr.Request,
               progress=gr.Progress()) -> Iterator[dict[Any, Any]]:
        key = request.session_hash or "anonymous"
        flag = CANCELS.start(key)
        try:
            for fraction, view in verify_view.run_step(sh.app, session, device, steps, lr, flag):
                progress(fraction, desc=view.message)
                yield ui.values(shown_values(view))
        except FreezelabError as err:
            warn(err)
            yield ui.values({"step.status": error_text(err), "step.loss": None, "step.grads": None,
                             "step.checks": None, "step.memory": "", "step.for": ""})
        finally:
            CANCELS.finish(key, flag)

    def on_cancel(request: gr.Request) -> str:
        stopped = CANCELS.cancel(request.session_hash or "anonymous")
        return "Cancelling…" if stopped else "Nothing is running."

    # Cancel sets this session's flag: the run stops inside the step, reports, and releases its memory.
    inputs = [sh.state, *ui.components(("step.device", "step.steps", "step.lr"))]
    outputs = ui.components(shown_ids(StepView))
    checked = ui["step.run"].click(on_check, inputs, outputs, queue=False, api_visibility="private",
                                   show_progress="hidden")
    checked.then(on_run, inputs, outputs, api_name="sanity_step", validator=validate,
                 concurrency_id=GPU_CONCURRENCY, concurrency_limit=1)
    ui["step.cancel"].click(on_cancel, None, ui["step.status"], api_visibility="private", queue=False)


def create_step_panel(ui: Registry) -> None:
    gr.Markdown("### Sanity step\nBuilds the model (random weights, or the checkpoint's with 'load weights'), "
                "applies the plan, runs a few real training steps and checks every parameter: gradients "
                "present, finite and non-zero where the plan trains, absent and unchanged where it freezes.")
    with gr.Row():
        device = gr.Radio(["cpu"], value="cpu", label="device")
        steps = gr.Number(2, label="steps", precision=0)
        lr = gr.Number(1e-4, label="learning rate")
    with gr.Row():
        run = gr.Button("Run the sanity step", variant="primary")
        cancel = gr.Button("Cancel")
    with gr.Column(elem_classes="fl-checked"):
        label = result_label("fl-step-for")
        status = gr.Markdown(elem_id="fl-step-status", elem_classes="fl-result")
        with gr.Row(elem_classes="fl-result"):
            loss = gr.Plot(show_label=False, elem_id="fl-step-loss")
            grads = gr.Plot(show_label=False, elem_id="fl-step-grads")
        checks = gr.Dataframe(headers=CHECK_HEADERS, column_count=len(CHECK_HEADERS), interactive=False, wrap=True,
                              label="checks", elem_id="fl-step-checks", elem_classes="fl-result",
                              column_widths=["17%", "9%", "44%", "30%"])
        memory = gr.Markdown(elem_id="fl-step-memory", elem_classes="fl-result")
    ui.add("step", {"device": device, "steps": steps, "lr": lr, "run": run, "cancel": cancel, "status": status,
                    "loss": loss, "grads": grads, "checks": checks, "memory": memory, "for": label}, wire=_wire_step)
