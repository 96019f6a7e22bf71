"""Export tab: the plan as JSON (download), a Python snippet, trainer flags; and plan import."""

from __future__ import annotations

from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.export_view import EXPORT, export_ids, export_view, note_name, target_titles
from freezelab.ui.registry import Registry, elem_id
from freezelab.ui.shared import PLAN_FILE_CONCURRENCY, Shared, error_text, warn
from freezelab.ui.uploads import accept_uploads_only

LANGUAGES = {"json": "json", "python": "python", "llamafactory": "yaml", "swift": "shell", "llava": "shell",
             "deepspeed": "json", "fsdp": "shell"}


def _wire(sh: Shared) -> None:
    ui, app = sh.ui, sh.app
    outputs = ui.components(export_ids())

    def on_export(session: Session) -> dict[Any, Any]:
        try:
            view = export_view(app, session)
        except FreezelabError as err:
            warn(err)
            return ui.values({elem_id(EXPORT, note_name(t)): error_text(err) for t in target_titles()})
        return ui.values(view.shown())

    ui["export.tab"].select(on_export, [sh.state], outputs, api_visibility="private")
    ui["export.refresh"].click(on_export, [sh.state], outputs, api_name="export")

    def on_upload(session: Session, path: str | None) -> dict[Any, Any]:
        return sh.show(lambda: handlers.import_plan_file(app, session, path))

    upload = ui["export.upload"]
    imported = upload.upload(on_upload, [sh.state, upload], sh.outputs(), api_name="import_plan",
                             concurrency_id=PLAN_FILE_CONCURRENCY, concurrency_limit=1)
    imported.then(on_export, [sh.state], outputs, api_visibility="private")


def create_export_panel(ui: Registry, tab: gr.Tab) -> None:
    gr.Markdown("Everything below reproduces the current plan on the current model. Each trainer's text says "
                "whether it is exact; when a trainer's options cannot express the plan, the closest setting "
                "is shown with what differs.")
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm")
        download = gr.DownloadButton("Download the plan JSON", variant="primary", size="sm")
    elems: dict[str, Any] = {"tab": tab, "refresh": refresh, "download": download}
    for name, title in target_titles().items():
        with gr.Accordion(title, open=name in ("json", "python")):
            elems[note_name(name)] = gr.Markdown(elem_id=f"fl-export-note-{name}")
            elems[name] = gr.Code(label=title, language=LANGUAGES.get(name), interactive=False, max_lines=30,
                                  elem_id=f"fl-export-{name}")
    gr.Markdown("### Import a plan\nA freezelab plan JSON (or a text file with one rule per line: "
                "`train @projector`). It replaces the current plan; undo brings the old one back.")
    elems["upload"] = accept_uploads_only(gr.File(label="plan file", file_types=[".json", ".txt"], type="filepath",
                                                  elem_id="fl-import"))
    ui.add(EXPORT, elems, wire=_wire)
