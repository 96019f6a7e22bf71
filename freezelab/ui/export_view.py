"""Export tab contents: every export target's text and note, and the plan JSON as a file."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezelab.exports import TARGETS, Export, export_all
from freezelab.session import Session
from freezelab.ui.handlers import App
from freezelab.ui.registry import elem_id
from freezelab.ui.style import badge

EXPORT_DIR = Path(tempfile.gettempdir()) / "freezelab-exports"
MAX_EXPORT_FILES = 256
EXPORT = "export"  # the export tab's ids: `download`, each target's text by its name, and its note


def note_name(target: str) -> str:
    """The name of the component saying whether a target's export is exact."""
    return f"{target}_note"


def export_ids() -> tuple[str, ...]:
    """What the export tab fills, in the order API clients receive it: the file, every text, every note."""
    return tuple(elem_id(EXPORT, name) for name in ("download", *TARGETS, *map(note_name, TARGETS)))


@dataclass
class ExportView:
    exports: dict[str, Export]
    json_path: str          # the plan JSON written to disk, for the download button

    def text(self, target: str) -> str:
        return self.exports[target].text

    def note(self, target: str) -> str:
        e = self.exports[target]
        mark = badge("exact", "ok") if e.exact else f"{badge('not exact', 'warn')} ({e.differs:,} parameters differ)"
        return f"{mark}: {e.note}"

    def shown(self) -> dict[str, Any]:
        """{component id: value} for the export tab."""
        by_name = {"download": self.json_path, **{t: self.text(t) for t in self.exports},
                   **{note_name(t): self.note(t) for t in self.exports}}
        return {elem_id(EXPORT, name): value for name, value in by_name.items()}


def _file_name(model: str, text: str) -> str:
    """Named after the model and the content, so identical plans share one file."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model)[:60] or "model"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"freezelab-plan-{safe}-{digest}.json"


def export_view(app: App, session: Session) -> ExportView:
    index = app.loaded(session).index
    exports = export_all(session.plan, index, workload=session.workload)
    text = exports["json"].text
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = EXPORT_DIR / _file_name(index.name, text)
    if not path.exists():
        # a unique temporary name: two sessions exporting the same plan at once must not collide
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=EXPORT_DIR, suffix=".tmp", delete=False) as f:
            f.write(text)
        os.replace(f.name, path)
        _prune(EXPORT_DIR, keep=path)
    return ExportView(exports, str(path))


def _prune(directory: Path, keep: Path) -> None:
    """Keep the newest MAX_EXPORT_FILES plan files: a long-running public server must not fill its disk.
    Gradio serves a copy from its own cache, so deleting an older file never breaks a download."""
    files = []
    for f in directory.glob("freezelab-plan-*.json"):
        try:
            files.append((f.stat().st_mtime, f))
        except OSError:
            continue  # removed by a concurrent prune
    files.sort(reverse=True)
    for _, f in files[MAX_EXPORT_FILES:]:
        if f != keep:
            f.unlink(missing_ok=True)


def target_titles() -> dict[str, str]:
    return {name: t.title for name, t in TARGETS.items()}
