"""Model panel: the built-in tiny model, a known architecture, or a local path / Hub id."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.session import Session
from freezelab.sources import known_info
from freezelab.ui import handlers
from freezelab.ui.registry import Registry, shown_values
from freezelab.ui.shared import Shared

MODES = ("architecture only", "load weights")


def model_choices() -> list[tuple[str, str]]:
    """Names only: they must fit the menu at a laptop's width (the header line gives the full title)."""
    return [("tiny (built-in)", "tiny"), *((r["name"], r["name"]) for r in known_info())]


def _wire(sh: Shared) -> None:
    ui = sh.ui
    names = {value for _, value in model_choices()}

    def load(session: Session, spec: str, mode: str, progress: Any) -> dict[Any, Any]:
        def report(fraction: float, message: str) -> None:
            progress(fraction, desc=message)

        def run() -> dict[str, Any]:
            view = handlers.load_model(sh.app, session, spec, mode == MODES[1], report)
            shown = shown_values(view)
            if view.session.model.lower() in names:  # the menu shows a known model however it was named
                shown["model.known"] = view.session.model.lower()
            return shown
        return sh.show(run)

    def on_known(session: Session, known: str, mode: str, progress=gr.Progress()) -> dict[Any, Any]:
        return load(session, known, mode, progress)

    def on_load(session: Session, known: str, custom: str, mode: str, progress=gr.Progress()) -> dict[Any, Any]:
        return load(session, (custom or "").strip() or known, mode, progress)

    outputs = sh.outputs("model.known")
    inputs = [sh.state, *ui.components(("model.known", "model.custom", "model.mode"))]
    sh.listen(ui["model.known"].input, on_known, [sh.state, ui["model.known"], ui["model.mode"]], outputs,
              api_name="load_known")
    sh.listen(ui["model.load"].click, on_load, inputs, outputs, api_name="load_model")
    sh.listen(ui["model.custom"].submit, on_load, inputs, outputs, api_visibility="private")


def create_model_panel(ui: Registry) -> None:
    with gr.Row():
        known = gr.Dropdown(model_choices(), value="tiny", label="Model", scale=4,
                            info="the built-in tiny model, or a known architecture (config only, no download)")
        custom = gr.Textbox(label="…or a local path or Hub id", scale=4,
                            placeholder="path/to/model or org/name",
                            elem_id="fl-custom-model",
                            info="a checkpoint directory, a config.json, or a Hub id (only its config is read)")
        mode = gr.Radio(list(MODES), value=MODES[0], label="Weights", scale=2,
                        info="weights are only needed by the sanity step")
        load = gr.Button("Load", variant="primary", scale=1, min_width=80)
    ui.add("model", {"known": known, "custom": custom, "mode": mode, "load": load}, wire=_wire)
