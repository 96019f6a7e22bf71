"""What every panel shares: the session state, the components that show a View, and
the one wrapper that turns a handler's result (or its error) into component values."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.ui.handlers import App, View

GPU_CONCURRENCY = "device"   # simulate and the sanity step share one slot: one at a time


@dataclass
class ViewOutputs:
    """The components a View fills, in the order `values` returns them."""

    state: gr.State
    status: gr.Markdown
    header: gr.Markdown
    summary: gr.HTML
    tree: gr.HTML
    rules: gr.Code
    warnings: gr.Markdown
    params_plot: gr.Plot
    map_plot: gr.Plot
    memory_plot: gr.Plot
    verdict: gr.HTML
    notes: gr.Markdown
    curve_plot: gr.Plot

    def list(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]


def view_values(view: View) -> tuple[Any, ...]:
    m = view.memory
    return (view.session, view.status, view.header, view.summary, view.tree, view.rules, view.warnings,
            view.params_fig, view.map_fig, m.figure, m.verdict, m.notes, m.curve)


def error_text(err: Exception) -> str:
    return f"⚠️ **{err}**"


def warn(err: Exception) -> None:
    """The error as a toast. Gradio renders toast text as HTML, and messages quote user input
    (selectors, paths): escaped, a name like `<img onerror=...>` shows as text."""
    gr.Warning(html.escape(str(err), quote=False))


def show(make: Callable[[], Any], extra: int = 0) -> tuple[Any, ...]:
    """Run a handler returning a View (or a View and `extra` more values); on a FreezelabError
    keep every component as it is, the extras included, and show the message."""
    try:
        result = make()
    except FreezelabError as err:
        warn(err)
        n = len(fields(ViewOutputs))
        return (gr.skip(), error_text(err), *([gr.skip()] * (n - 2 + extra)))
    if isinstance(result, View):
        return view_values(result)
    view, *more = result
    return (*view_values(view), *more)


@dataclass
class Shared:
    app: App
    out: ViewOutputs

    @property
    def state(self) -> gr.State:
        return self.out.state

    @property
    def outputs(self) -> list[Any]:
        return self.out.list()
