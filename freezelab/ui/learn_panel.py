"""Learn tab: guided steps for workshops (stage 1 -> stage 2 -> last N layers, tiny then 7B)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from freezelab.session import Session
from freezelab.ui.memory_panel import FIELDS
from freezelab.ui.learn_view import INTRO, LESSONS, run_lesson
from freezelab.ui.shared import Shared, show


@dataclass
class LearnPanel:
    buttons: dict[str, gr.Button]
    text: gr.Markdown

    def wire(self, sh: Shared, model: gr.Dropdown, workload: list[Any]) -> None:
        """A lesson also sets the model menu and the workload controls to what it loaded."""
        extra = [self.text, model, *workload]

        def lesson(session: Session, key: str) -> tuple[Any, ...]:
            view, text = run_lesson(sh.app, session, key)
            w = view.session.workload
            return (view, text, view.session.model, *(getattr(w, f) for f in FIELDS))

        for key, button in self.buttons.items():
            def on_click(session: Session, key: str = key) -> tuple[Any, ...]:
                return show(lambda: lesson(session, key), extra=len(extra))
            button.click(on_click, [sh.state], [*sh.outputs, *extra], api_name=f"lesson_{key.replace('-', '_')}")


def create_learn_panel() -> LearnPanel:
    gr.Markdown(f"### From stage 1 to stage 2 to the last N layers\n{INTRO}")
    buttons: dict[str, gr.Button] = {}
    with gr.Row():
        for key, lesson in LESSONS.items():
            if lesson.model == "tiny":
                buttons[key] = gr.Button(f"{lesson.number}. {lesson.title}", size="sm")
    with gr.Row():
        for key, lesson in LESSONS.items():
            if lesson.model != "tiny":
                buttons[key] = gr.Button(f"{lesson.number}. {lesson.title}", size="sm")
    text = gr.Markdown("Press a button to start.", elem_id="fl-learn-text")
    return LearnPanel(buttons, text)
