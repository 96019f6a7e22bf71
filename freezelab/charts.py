"""Plotly figures of a plan and its costs: pure functions of (index, mask, estimates).

Figures are built from plain dicts in one `go.Figure(...)` call: plotly's
per-call helpers (`add_vline`, `update_layout` chains) validate on every call
and cost tens of milliseconds each, which a live dashboard cannot afford.
The treemap aggregates at layer level, so a 72B model is ~150 boxes, not
1,400 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from freezelab import units
from freezelab.anatomy import count
from freezelab.components import COMPONENTS, Part
from freezelab.index import ModelIndex
from freezelab.index_memo import per_index
from freezelab.memory.result import CATEGORIES, MemoryEstimate
from freezelab.units import GiB

TRAINABLE = "#2e9e5b"
FROZEN = "#b8c2cc"
ADAPTER = "#d9a429"
PARTIAL_SCALE = [[0.0, FROZEN], [0.5, "#8fcf9f"], [1.0, TRAINABLE]]
CATEGORY_COLORS = {
    "weights": "#5b7db1",
    "quantized_weights": "#9db4d8",
    "adapter_weights": "#d9a429",
    "gradients": "#e07b39",
    "optimizer_state": "#c44e52",
    "optimizer_temp": "#f2a0a1",
    "activations": "#55a868",
    "logits_loss": "#8172b3",
    "workspace": "#937860",
    "overhead": "#cfcfcf",
}
CATEGORY_LABELS = {
    "weights": "weights",
    "quantized_weights": "quantized weights",
    "adapter_weights": "adapter weights",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "optimizer_temp": "optimizer temporaries",
    "activations": "activations",
    "logits_loss": "logits + loss",
    "workspace": "workspace",
    "overhead": "CUDA context + allocator cache",
}
COMPONENT_LABELS = {"vision": "vision tower", "projector": "projector", "llm": "language model"}

Gpu = tuple[str, int]  # (display name, total bytes)

# A named template ("plotly_white") is deep-copied and validated on every figure (~40 ms) and
# travels in every figure's JSON (~6 KB); this small one costs neither.
TEMPLATE = {"layout": {"paper_bgcolor": "white", "plot_bgcolor": "white",
                       "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#2a3f5f"},
                       "xaxis": {"gridcolor": "#ebf0f8", "zerolinecolor": "#ebf0f8", "automargin": True},
                       "yaxis": {"gridcolor": "#ebf0f8", "zerolinecolor": "#ebf0f8", "automargin": True},
                       "colorway": ["#5b7db1", "#e07b39", "#55a868", "#c44e52", "#8172b3", "#937860"]}}


def _layout(title: str, height: int, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title, "x": 0.01, "font": {"size": 14}}, "height": height,
            "margin": {"l": 10, "r": 10, "t": 36, "b": 10}, "template": TEMPLATE,
            "legend": {"orientation": "h", "y": -0.15}, **extra}


# -- parameters --------------------------------------------------------------------

def params_by_component(index: ModelIndex, mask: Sequence[bool]) -> go.Figure:
    """Trained-in-full, adapter and frozen parameters of the vision tower, projector and LLM (stacked bars);
    on the index of an adapted model (Resolution.adapted) the adapters are their own bar."""
    counts = [count(index, list(mask), index.component_params(c)) for c in COMPONENTS]
    adapters = [sum(p.numel for p in index.params if p.component == c and p.part == Part.ADAPTER)
                for c in COMPONENTS]
    labels = [COMPONENT_LABELS[c] for c in COMPONENTS]

    def bar(name: str, values: list[int], color: str) -> dict[str, Any]:
        return {"type": "bar", "orientation": "h", "name": name, "y": labels, "x": values,
                "marker": {"color": color}, "text": [units.params(v) if v else "" for v in values],
                "textposition": "auto", "hovertemplate": "%{y}: %{x:,} " + name + "<extra></extra>"}

    data = [bar("trained in full" if any(adapters) else "trainable",
                [c.trainable - a for c, a in zip(counts, adapters)], TRAINABLE)]
    if any(adapters):
        data.append(bar("adapters", adapters, ADAPTER))
    data.append(bar("frozen", [c.frozen for c in counts], FROZEN))
    layout = _layout("Parameters per component", 230, barmode="stack",
                     yaxis={"autorange": "reversed", "automargin": True},
                     xaxis={"title": {"text": "parameters"}})
    return go.Figure({"data": data, "layout": layout})


@per_index
def _map_modules(index: ModelIndex) -> list[tuple[int, str]]:
    """(position in index.modules, parent id) of the modules the treemap shows: everything with
    parameters down to layer level (a layer's inner modules are aggregated into it). Layer
    containers (ModuleList) are skipped, so the layers sit directly in their tower."""
    layer_paths = {p for paths in index.layers.values() for p in paths}
    skipped = {m.path for m in index.modules if m.type == "ModuleList"}
    shown = []
    for pos, m in enumerate(index.modules):
        parts = m.path.split(".") if m.path else []
        ancestors = [".".join(parts[:k]) for k in range(1, len(parts))]
        if not m.params or m.path in skipped or any(a in layer_paths for a in ancestors):
            continue
        parent = next((a for a in reversed(ancestors) if a not in skipped), "") if m.path else None
        shown.append((pos, "" if parent is None else (parent or "(model)")))
    return shown


def model_map(index: ModelIndex, mask: Sequence[bool]) -> go.Figure:
    """Treemap of the model (down to layers), sized by parameters, coloured by the trainable share."""
    mask = list(mask)
    ids, labels, parents, values, colors, hover = [], [], [], [], [], []
    for pos, parent in _map_modules(index):
        m = index.modules[pos]
        c = count(index, mask, m.params)
        name = m.path.rpartition(".")[2] if m.path else index.name
        if m.layer is not None:
            name = f"layer {name}"  # "layer 31", not a bare "31"
        ids.append(m.path or "(model)")
        labels.append(name)
        parents.append(parent)
        values.append(c.total)
        colors.append(c.trainable / c.total if c.total else 0.0)
        hover.append(f"{m.path or index.name} ({m.type})<br>{units.params(c.trainable)} of "
                     f"{units.params(c.total)} trainable")
    trace = {"type": "treemap", "ids": ids, "labels": labels, "parents": parents, "values": values,
             "branchvalues": "total", "hovertext": hover, "hoverinfo": "text", "maxdepth": -1,
             "marker": {"colors": colors, "colorscale": PARTIAL_SCALE, "cmin": 0, "cmax": 1,
                        "line": {"width": 0.5, "color": "white"}},
             "textinfo": "label"}
    return go.Figure({"data": [trace], "layout": _layout("Model map (green: trainable; click to zoom)", 360)})


# -- memory --------------------------------------------------------------------------

def breakdown_with_overhead(estimate: MemoryEstimate, split: bool = True) -> dict[str, int]:
    """The estimate's categories plus what the device shows on top of tensors; with adapters or a
    quantized base (the analytic estimate's details) the weights split into 16-bit, quantized and adapter."""
    parts = {c: int(estimate.breakdown.get(c, 0)) for c in CATEGORIES}
    adapters = estimate.details.get("adapters") if estimate.details and split else None
    if adapters:
        split = {"quantized_weights": adapters["quantized_bytes"], "adapter_weights": adapters["weights_bytes"]}
        parts = {"weights": parts["weights"] - sum(split.values()), **split,
                 **{c: v for c, v in parts.items() if c != "weights"}}
    parts["overhead"] = max(0, estimate.device_estimate_bytes - estimate.peak_bytes)
    return parts


def _axis_max(top: float, gpus: Sequence[Gpu]) -> float:
    """Show the GPU lines up to the first card that fits, unless that card dwarfs the bar."""
    fitting = [b for _, b in sorted(gpus, key=lambda g: g[1]) if b >= top]
    if fitting and fitting[0] <= 3 * top:
        return max(top, fitting[0]) * 1.06
    return top * 1.15 if top > 0 else 1.0


def _gpu_lines(gpus: Sequence[Gpu], limit: float, axis: str) -> tuple[list[dict], list[dict]]:
    shapes, notes = [], []
    for name, size in gpus:
        if size > limit:
            continue
        v = size / GiB
        if axis == "x":
            shapes.append({"type": "line", "x0": v, "x1": v, "y0": 0, "y1": 1, "yref": "paper",
                           "line": {"dash": "dot", "color": "#444", "width": 1}})
            notes.append({"x": v, "y": 1, "yref": "paper", "text": name, "showarrow": False,
                          "textangle": -90, "xanchor": "right", "yanchor": "top", "font": {"size": 10}})
        else:
            shapes.append({"type": "line", "y0": v, "y1": v, "x0": 0, "x1": 1, "xref": "paper",
                           "line": {"dash": "dot", "color": "#444", "width": 1}})
            notes.append({"y": v, "x": 0, "xref": "paper", "text": name, "showarrow": False,
                          "xanchor": "left", "yanchor": "bottom", "font": {"size": 10}})
    return shapes, notes


def memory_breakdown(estimate: MemoryEstimate, gpus: Sequence[Gpu]) -> go.Figure:
    """One stacked bar of the peak by category, with a dotted line per GPU size."""
    parts = breakdown_with_overhead(estimate)
    data = [{"type": "bar", "orientation": "h", "y": ["per GPU"], "x": [b / GiB],
             "name": CATEGORY_LABELS[c], "marker": {"color": CATEGORY_COLORS[c]},
             "hovertemplate": f"{CATEGORY_LABELS[c]}: {units.gib(b, 2)}<extra></extra>"}
            for c, b in parts.items() if b > 0]
    limit = _axis_max(estimate.device_estimate_bytes, gpus)
    shapes, notes = _gpu_lines(gpus, limit, "x")
    layout = _layout(f"Estimated GPU memory at the peak ({estimate.phase}): "
                     f"{units.gib(estimate.device_estimate_bytes)}", 260, barmode="stack",
                     xaxis={"title": {"text": "GiB"}, "range": [0, limit / GiB]},
                     yaxis={"showticklabels": False}, shapes=shapes, annotations=notes, showlegend=True)
    return go.Figure({"data": data, "layout": layout})


def memory_curve(xs: Sequence[int], estimates: Sequence[MemoryEstimate], gpus: Sequence[Gpu], *,
                 x_label: str = "batch size", current: int | None = None) -> go.Figure:
    """Device memory (and tensor peak) against batch size or sequence length."""
    device = [e.device_estimate_bytes / GiB for e in estimates]
    tensors = [e.peak_bytes / GiB for e in estimates]
    data = [{"type": "scatter", "mode": "lines+markers", "x": list(xs), "y": device, "name": "device (nvidia-smi)",
             "line": {"color": "#c44e52"}, "hovertemplate": x_label + " %{x}: %{y:.1f} GiB<extra></extra>"},
            {"type": "scatter", "mode": "lines", "x": list(xs), "y": tensors, "name": "tensors only",
             "line": {"color": "#5b7db1", "dash": "dash"}, "hovertemplate": "%{y:.1f} GiB<extra></extra>"}]
    top = max(e.device_estimate_bytes for e in estimates) if estimates else GiB
    limit = max(_axis_max(top, gpus), top * 1.06)
    shapes, notes = _gpu_lines(gpus, limit, "y")
    if current is not None:
        shapes.append({"type": "line", "x0": current, "x1": current, "y0": 0, "y1": 1, "yref": "paper",
                       "line": {"color": "#2e9e5b", "width": 2}})
    layout = _layout(f"Memory vs {x_label}", 280, xaxis={"title": {"text": x_label}, "type": "log", "dtick": 0.30103},
                     yaxis={"title": {"text": "GiB"}, "range": [0, limit / GiB]}, shapes=shapes, annotations=notes)
    return go.Figure({"data": data, "layout": layout})


def estimate_comparison(estimates: Sequence[MemoryEstimate]) -> go.Figure:
    """Side-by-side bars per category for several estimates (e.g. analytic vs simulated)."""
    data = []
    for e in estimates:
        parts = breakdown_with_overhead(e, split=False)  # the simulated estimate has no weight split
        keys = [c for c in parts if any(breakdown_with_overhead(x, split=False)[c] for x in estimates)]
        data.append({"type": "bar", "name": e.method, "x": [CATEGORY_LABELS[c] for c in keys],
                     "y": [parts[c] / GiB for c in keys], "hovertemplate": "%{x}: %{y:.2f} GiB<extra></extra>"})
    layout = _layout("Estimates by category", 300, barmode="group", yaxis={"title": {"text": "GiB"}})
    return go.Figure({"data": data, "layout": layout})


# -- sanity step ------------------------------------------------------------------------

def line_chart(ys: Sequence[float], *, title: str, y_label: str, x_label: str = "step",
               log: bool = False) -> go.Figure:
    xs = list(range(1, len(ys) + 1))
    data = [{"type": "scatter", "mode": "lines+markers", "x": xs, "y": list(ys), "name": y_label,
             "line": {"color": "#5b7db1"}}]
    layout = _layout(title, 260, xaxis={"title": {"text": x_label}, "dtick": 1},
                     yaxis={"title": {"text": y_label}, "type": "log" if log else "linear"}, showlegend=False)
    return go.Figure({"data": data, "layout": layout})


def grouped_bars(values: dict[str, float], *, title: str, y_label: str, log: bool = False) -> go.Figure:
    names = list(values)
    data = [{"type": "bar", "x": names, "y": [values[n] for n in names], "marker": {"color": TRAINABLE}}]
    layout = _layout(title, 300, yaxis={"title": {"text": y_label}, "type": "log" if log else "linear"},
                     showlegend=False)
    return go.Figure({"data": data, "layout": layout})
