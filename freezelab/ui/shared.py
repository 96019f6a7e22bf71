"""What every panel's wiring shares: the app, the component registry and the page, and the one
wrapper that turns a handler's result (or its error) into component values."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.ui.handlers import ALL_PARTS, STATE, STATUS, App, view_ids
from freezelab.ui.registry import Registry, shown_values

GPU_CONCURRENCY = "device"   # simulate and the sanity step share one slot: one at a time
# Plan files: the costliest request that is not a run (a 1,000-rule plan takes a quarter of a second of
# CPU to check), and a rare one for a class: one at a time, so that sessions uploading plans together
# take one thread's share of the server, not one each.
PLAN_FILE_CONCURRENCY = "plan_file"


def error_text(err: Exception) -> str:
    return f"⚠️ **{err}**"


def warn(err: Exception) -> None:
    """The error as a toast. Gradio renders toast text as HTML, and messages quote user input
    (selectors, paths): escaped, a name like `<img onerror=...>` shows as text."""
    gr.Warning(html.escape(str(err), quote=False))


@dataclass
class Shared:
    app: App
    ui: Registry
    demo: gr.Blocks

    @property
    def state(self) -> gr.State:
        return self.ui[STATE]

    def outputs(self, *extra: str, parts: tuple[str, ...] = ALL_PARTS) -> list[Any]:
        """The components a View with these `parts` fills, then those of `extra` ids: an event's outputs."""
        return self.ui.components((*view_ids(parts), *extra))

    def show(self, make: Callable[[], Any]) -> dict[Any, Any]:
        """Run a handler returning a view (a dataclass with shown fields: a View, a WorkloadRefused),
        or {id: value} (a View's values and more); on a FreezelabError keep every component as it
        is and show the message."""
        try:
            result = make()
        except FreezelabError as err:
            warn(err)
            return self.ui.values({STATUS: error_text(err)})
        return self.ui.values(result if isinstance(result, Mapping) else shown_values(result))
