"""The dashboard as a gr.Blocks: panels laid out, then wired to the shared view outputs."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from freezelab.policy import from_env
from freezelab.ui import handlers
from freezelab.ui.export_panel import create_export_panel
from freezelab.ui.handlers import App
from freezelab.ui.learn_panel import create_learn_panel
from freezelab.ui.memory_panel import FIELDS, create_memory_panel
from freezelab.ui.model_panel import create_model_panel
from freezelab.ui.plan_panel import create_plan_panel, create_presets
from freezelab.ui.shared import Shared, ViewOutputs
from freezelab.ui.style import CSS, theme
from freezelab.ui.summary_panel import create_map_panel, create_summary_panel
from freezelab.ui.tree_panel import create_tree_panel
from freezelab.ui.verify_panel import create_simulate_panel, create_step_panel, release_session

TITLE = "freezelab"
INTRO = ("## freezelab\nSee exactly which parameters of a LLaVA-style model (vision tower → projector → LLM) a "
         "freezing plan trains, what one training step costs in GPU memory and why, and prove it with a real "
         "training step.")
DEFAULT_CONCURRENCY = 8  # cheap handlers (milliseconds) may run side by side; device work has its own slot
DELETE_CACHE = (3600, 3600)  # hourly, Gradio deletes its copies of uploads and downloads older than an hour


def create_app(app: App | None = None) -> gr.Blocks:
    """Build the dashboard; the first render already shows the tiny model with its charts."""
    app = app or App.for_policy(from_env())
    first = handlers.initial_view(app)
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        state = gr.State(first.session)
        gr.Markdown(INTRO)
        if app.policy.public:
            gr.Markdown(f"<small>{app.policy.describe()}</small>", elem_id="fl-mode")
        model = create_model_panel()
        header = gr.Markdown(first.header, label="model", elem_id="fl-header")
        status = gr.Markdown(first.status, label="status", elem_id="fl-status")
        with gr.Tabs():
            with gr.Tab("Plan & memory", id="dashboard"):
                with gr.Row():
                    with gr.Column(scale=5):
                        presets = create_presets()
                        tree = create_tree_panel(first)
                        plan = create_plan_panel(first, presets)
                    with gr.Column(scale=6):
                        summary = create_summary_panel(first)
                        memory = create_memory_panel(first)
                        model_map = create_map_panel(first)
            with gr.Tab("Verify", id="verify"):
                simulate = create_simulate_panel()
                step = create_step_panel()
            with gr.Tab("Export", id="export") as export_tab:
                export = create_export_panel(export_tab)
            with gr.Tab("Learn", id="learn"):
                learn = create_learn_panel()
        out = ViewOutputs(state=state, status=status, header=header, summary=summary.summary, tree=tree.tree,
                          rules=plan.rules, warnings=plan.warnings, params_plot=summary.params_plot,
                          map_plot=model_map, memory_plot=memory.plot, verdict=memory.verdict,
                          notes=memory.notes, curve_plot=memory.curve)
        shared = Shared(app, out)
        for panel in (model, plan, memory, simulate, export):
            panel.wire(shared)
        step.wire(shared, demo)
        tree.wire(shared, plan.selector, plan.preview)
        learn.wire(shared, model.known, [memory.controls[f] for f in FIELDS])
        demo.unload(release_session)
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


MAX_UPLOAD = "1mb"  # plan files are a few KB (freezelab.plans.MAX_PLAN_BYTES is 256 KB)
# Gradio keeps every browser session's last page (each output's latest value: ~1-2 MB with a 7B model's tree
# and charts) until this many newer sessions push it out, least recently used first; closed tabs go first.
MAX_SESSIONS = 256


def max_sessions(environ: dict[str, str] | None = None) -> int:
    """FREEZELAB_MAX_SESSIONS, else MAX_SESSIONS: the memory bound on sessions kept by the server."""
    env = os.environ if environ is None else environ
    raw = env.get("FREEZELAB_MAX_SESSIONS", "").strip()
    if not raw:
        return MAX_SESSIONS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"FREEZELAB_MAX_SESSIONS must be a positive whole number, got {raw!r}")
    return int(raw)


def launch_options() -> dict[str, Any]:
    """Keyword arguments for launch(): Gradio 6 takes theme and CSS there. Host and port are left to
    Gradio, which reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself."""
    return {"theme": theme(), "css": CSS, "max_file_size": MAX_UPLOAD, "state_session_capacity": max_sessions()}
