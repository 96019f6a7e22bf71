"""Export tab: the plan as JSON (download), a Python snippet, trainer flags; and plan import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.export_view import export_view, target_titles
from freezelab.ui.shared import Shared, error_text, show, warn
from freezelab.ui.uploads import accept_uploads_only

LANGUAGES = {"json": "json", "python": "python", "llamafactory": "yaml", "swift": "shell", "llava": "shell"}


@dataclass
class ExportPanel:
    tab: gr.Tab
    refresh: gr.Button
    download: gr.DownloadButton
    codes: dict[str, gr.Code]
    notes: dict[str, gr.Markdown]
    upload: gr.File

    def wire(self, sh: Shared) -> None:
        app = sh.app
        targets = list(self.codes)
        outputs = [self.download, *(self.codes[t] for t in targets), *(self.notes[t] for t in targets)]

        def on_export(session: Session) -> tuple[Any, ...]:
            try:
                view = export_view(app, session)
            except FreezelabError as err:
                warn(err)
                return (gr.skip(), *(gr.skip() for _ in targets), *(error_text(err) for _ in targets))
            return (view.json_path, *(view.text(t) for t in targets), *(view.note(t) for t in targets))

        self.tab.select(on_export, [sh.state], outputs, api_visibility="private")
        self.refresh.click(on_export, [sh.state], outputs, api_name="export")

        def on_upload(session: Session, path: str | None) -> tuple[Any, ...]:
            return show(lambda: handlers.import_plan_file(app, session, path))

        imported = self.upload.upload(on_upload, [sh.state, self.upload], sh.outputs, api_name="import_plan")
        imported.then(on_export, [sh.state], outputs, api_visibility="private")


def create_export_panel(tab: gr.Tab) -> ExportPanel:
    gr.Markdown("Everything below reproduces the current plan on the current model. Each trainer's text says "
                "whether it is exact; when a trainer's options cannot express the plan, the closest setting "
                "is shown with what differs.")
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm")
        download = gr.DownloadButton("Download the plan JSON", variant="primary", size="sm")
    codes: dict[str, gr.Code] = {}
    notes: dict[str, gr.Markdown] = {}
    for name, title in target_titles().items():
        with gr.Accordion(title, open=name in ("json", "python")):
            notes[name] = gr.Markdown(elem_id=f"fl-export-note-{name}")
            codes[name] = gr.Code(label=title, language=LANGUAGES.get(name), interactive=False,
                                  max_lines=30, elem_id=f"fl-export-{name}")
    gr.Markdown("### Import a plan\nA freezelab plan JSON (or a text file with one rule per line: "
                "`train @projector`). It replaces the current plan; undo brings the old one back.")
    upload = accept_uploads_only(gr.File(label="plan file", file_types=[".json", ".txt"], type="filepath",
                                         elem_id="fl-import"))
    return ExportPanel(tab, refresh, download, codes, notes, upload)
