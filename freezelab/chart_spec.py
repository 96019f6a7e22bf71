"""A chart as the plain {"data", "layout"} spec Plotly draws, sent without building a Plotly figure.

Gradio's Plot sends a Plotly figure as `figure.to_json()`. Building a `go.Figure` from a spec copies
it and makes an object per trace and layout key (even unvalidated), and its `to_json` walks that tree
again: about 2 ms for the dashboard's five figures of an event, on every click. `Chart` holds the spec
and writes it as JSON directly; anything else asked of it (`chart.layout.shapes`, `update_layout`,
`show`) builds the Plotly figure once and answers from it, and from then on `to_json` writes that
figure, so a change made through it is sent.
"""

from __future__ import annotations

import json
from typing import Any

import plotly.graph_objects as go


class Chart:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._figure: go.Figure | None = None

    @property
    def figure(self) -> go.Figure:
        """The Plotly figure of the spec (unvalidated), built on first use."""
        if self._figure is None:
            self._figure = go.Figure(self.spec, _validate=False)
        return self._figure

    def to_json(self) -> str:
        if self._figure is not None:
            return self._figure.to_json()
        try:
            return json.dumps(self.spec, allow_nan=False)
        except (TypeError, ValueError):   # NaN, numpy values: Plotly's encoder knows them
            return self.figure.to_json()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("spec", "_figure"):
            raise AttributeError(name)
        return getattr(self.figure, name)
