"""The dashboard as a gr.Blocks: panels laid out and registered by id, then wired."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from freezelab.policy import from_env
from freezelab.ui import handlers
from freezelab.ui.adapter_panel import create_adapter_panel
from freezelab.ui.compute_panel import create_compute_panel
from freezelab.ui.export_panel import create_export_panel
from freezelab.ui.handlers import App
from freezelab.ui.learn_panel import create_learn_panel
from freezelab.ui.live_pages import LivePages
from freezelab.ui.memory_panel import create_memory_panel
from freezelab.ui.model_panel import create_model_panel
from freezelab.ui.pause_gate import PauseGate
from freezelab.ui.plan_panel import create_plan_panel, create_presets
from freezelab.ui.registry import Registry
from freezelab.ui.shared import Shared
from freezelab.ui.style import CSS, theme
from freezelab.ui.summary_panel import create_map_panel, create_summary_panel
from freezelab.ui.tree_panel import create_tree_panel
from freezelab.ui.verify_panel import create_simulate_panel, create_step_panel, create_verify_header, session_release

TITLE = "freezelab"
INTRO = ("## freezelab\nSee exactly which parameters of a LLaVA-style model (vision tower → projector → LLM) a "
         "freezing plan trains, what one training step costs in GPU memory and why, and prove it with a real "
         "training step.")
# One at a time per event listener (a preset button, the tree's toggle, a workload field): the handlers are
# pure Python, so side by side they only share the one thread that holds the GIL, and each of them, and
# the event loop that serves every page, waits its turn at every switch. On 2 cores a class of 30 (the
# load test, benchmarks/load_test.py) had a p95 of 350-420 ms with 8 at a time and 210-290 ms with 1;
# different listeners still run side by side, so a slow Load does not hold up the presets. Runs have
# their own slot (GPU_CONCURRENCY).
DEFAULT_CONCURRENCY = 1
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
        shared = Shared(app, ui, demo)
        ui.wire(shared)
        demo.unload(session_release(shared))
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    slow_queue_poll(demo)
    return demo, ui


# Gradio's queue looks for work to start every millisecond and for progress to send every 10 ms, idle or
# not (queueing.Queue.sleep_when_free, progress_update_sleep_when_free): 3.6% of a core on an idle server
# here, and a wake-up of the event loop's thread every millisecond while a handler holds the GIL. Every
# 5 ms is plenty for a dashboard whose events take tens of ms; a run's progress bar every 50 ms.
QUEUE_POLL_S = {"sleep_when_free": 0.005, "progress_update_sleep_when_free": 0.05}


def slow_queue_poll(demo: gr.Blocks, polls: dict[str, float] = QUEUE_POLL_S) -> list[str]:
    """Make the queue poll no more often than `polls` say; the knobs it found (a Gradio without them
    is left as it is)."""
    queue = getattr(demo, "_queue", None)
    found = [k for k in polls if isinstance(getattr(queue, k, None), float)]
    for k in found:
        setattr(queue, k, max(getattr(queue, k), polls[k]))
    return found


MAX_UPLOAD = "1mb"  # plan files are a few KB (freezelab.plans.MAX_PLAN_BYTES is 256 KB)
# Gradio keeps every browser session's last page (each output's latest value: ~1-2 MB with a 7B model's tree
# and charts) until this many newer sessions push it out, least recently used first (public mode: those
# without an open page first, freezelab.ui.live_pages).
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


def launch_options(app: App | None = None) -> dict[str, Any]:
    """Keyword arguments for launch(): Gradio 6 takes theme and CSS there. Host and port are left to
    Gradio, which reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself. With `app`'s throttle (public
    mode), the server refuses paused sessions' requests in front of the queue (pause_gate), and sessions
    with an open page keep their state when the session limit is reached (live_pages)."""
    options = {"theme": theme(), "css": CSS, "max_file_size": MAX_UPLOAD, "state_session_capacity": max_sessions()}
    if app is not None and app.throttle is not None:
        middleware = [Middleware(LivePages), Middleware(PauseGate, throttle=app.throttle)]
        options["app_kwargs"] = {"middleware": middleware}
    return options
