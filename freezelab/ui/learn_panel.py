"""Learn tab: guided steps for workshops (stage 1 -> stage 2 -> last N layers -> checkpointing -> LoRA
against stage 2 -> QLoRA on a 24 GB card, on 7B)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.session import Session
from freezelab.ui.learn_view import INTRO, LESSONS, run_lesson
from freezelab.ui.memory_view import WORKLOAD_IDS, workload_shown
from freezelab.ui.registry import Registry, shown_values
from freezelab.ui.shared import Shared


def _wire(sh: Shared) -> None:
    """A lesson also sets the model menu and the workload controls to what it loaded."""

    def lesson(session: Session, key: str) -> dict[str, Any]:
        view, text = run_lesson(sh.app, session, key)
        return {**shown_values(view), "learn.text": text, "model.known": view.session.model,
                **workload_shown(view.session.workload)}

    outputs = sh.outputs("learn.text", "model.known", *WORKLOAD_IDS)
    for key in LESSONS:
        def on_click(session: Session, key: str = key) -> dict[Any, Any]:
            return sh.show(lambda: lesson(session, key))
        sh.ui[f"learn.{key}"].click(on_click, [sh.state], outputs, api_name=f"lesson_{key.replace('-', '_')}")


def create_learn_panel(ui: Registry) -> None:
    gr.Markdown(f"### From stage 1 to stage 2 to the last N layers, then checkpointing and adapters\n{INTRO}")
    buttons: dict[str, gr.Button] = {}
    with gr.Row(elem_id="fl-learn-buttons"):
        for key, lesson in LESSONS.items():
            buttons[key] = gr.Button(f"{lesson.number}. {lesson.title}", size="sm", elem_id=f"fl-lesson-{key}")
    text = gr.Markdown("Press a button to start.", elem_id="fl-learn-text")
    ui.add("learn", {**buttons, "text": text}, wire=_wire)
