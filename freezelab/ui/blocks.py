"""The dashboard as a gr.Blocks: panels laid out and registered by id, then wired."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from freezelab.policy import from_env
from freezelab.ui import handlers
from freezelab.ui.adapter_panel import create_adapter_panel
from freezelab.ui.compute_panel import create_compute_panel
from freezelab.ui.export_panel import create_export_panel
from freezelab.ui.handlers import App
from freezelab.ui.learn_panel import create_learn_panel
from freezelab.ui.memory_panel import create_memory_panel
from freezelab.ui.model_panel import create_model_panel
from freezelab.ui.plan_panel import create_plan_panel, create_presets
from freezelab.ui.registry import Registry
from freezelab.ui.shared import Shared
from freezelab.ui.style import CSS, theme
from freezelab.ui.summary_panel import create_map_panel, create_summary_panel
from freezelab.ui.tree_panel import create_tree_panel
from freezelab.ui.verify_panel import create_simulate_panel, create_step_panel, create_verify_header, release_session

TITLE = "freezelab"
INTRO = ("## freezelab\nSee exactly which parameters of a LLaVA-style model (vision tower → projector → LLM) a "
         "freezing plan trains, what one training step costs in GPU memory and why, and prove it with a real "
         "training step.")
DEFAULT_CONCURRENCY = 8  # cheap handlers (milliseconds) may run side by side; device work has its own slot
DELETE_CACHE = (3600, 3600)  # hourly, Gradio deletes its copies of uploads and downloads older than an hour


def create_app(app: App | None = None) -> gr.Blocks:
    """Build the dashboard; the first render already shows the tiny model with its charts."""
    return create_dashboard(app)[0]


def create_dashboard(app: App | None = None) -> tuple[gr.Blocks, Registry]:
    """The dashboard and its registry of components. Each builder below lays out its panel and
    registers its components by id with its wiring; once all are laid out, the wirings run."""
    app = app or App.for_policy(from_env())
    first = handlers.initial_view(app)
    ui = Registry()
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        ui.add("top", {"state": gr.State(first.session)})
        gr.Markdown(INTRO)
        if app.policy.public:
            gr.Markdown(f"<small>{app.policy.describe()}</small>", elem_id="fl-mode")
        create_model_panel(ui)
        ui.add("top", {"header": gr.Markdown(first.header, label="model", elem_id="fl-header"),
                       "status": gr.Markdown(first.status, label="status", elem_id="fl-status")})
        with gr.Tabs():
            with gr.Tab("Plan & memory", id="dashboard"):
                with gr.Row():
                    with gr.Column(scale=5):
                        create_presets(ui)
                        create_tree_panel(ui, first)
                        create_plan_panel(ui, first)
                        create_adapter_panel(ui, first)
                    with gr.Column(scale=6):
                        create_summary_panel(ui, first)
                        create_memory_panel(ui, first)
                        create_compute_panel(ui, first)
                        create_map_panel(ui, first)
            with gr.Tab("Verify", id="verify"):
                create_verify_header(ui, first)
                create_simulate_panel(ui)
                create_step_panel(ui)
            with gr.Tab("Export", id="export") as export_tab:
                create_export_panel(ui, export_tab)
            with gr.Tab("Learn", id="learn"):
                create_learn_panel(ui)
        ui.wire(Shared(app, ui, demo))
        demo.unload(release_session)
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo, ui


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
