"""Plotly figures of a plan and its costs: pure functions of (index, mask, estimates).

Figures are built from plain dicts in one `figure(...)` call, without plotly's validation (4-8 ms a
figure; tests/test_charts.py validates every chart once and checks it would change nothing sent).
The treemap aggregates at layer level, so a 72B model is ~150 boxes, not 1,400 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


from freezelab import units
from freezelab.anatomy import count
from freezelab.chart_spec import Chart
from freezelab.components import COMPONENTS, Part
from freezelab.compute.flops import GROUPS, Flops
from freezelab.index import ModelIndex
from freezelab.index_memo import per_index
from freezelab.memory.batch_curve import BatchPoint
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
LEGEND_LABELS = {"overhead": "CUDA context + cache"}  # short enough for two legend columns at 1024 px
COMPONENT_LABELS = {"vision": "vision tower", "projector": "projector", "llm": "language model"}

Gpu = tuple[str, int]  # (display name, total bytes)

# A named template ("plotly_white") is deep-copied and validated on every figure (~40 ms) and
# travels in every figure's JSON (~6 KB); this small one costs neither.
TEMPLATE = {"layout": {"paper_bgcolor": "white", "plot_bgcolor": "white",
                       "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#2a3f5f"},
                       "xaxis": {"gridcolor": "#ebf0f8", "zerolinecolor": "#ebf0f8", "automargin": True},
                       "yaxis": {"gridcolor": "#ebf0f8", "zerolinecolor": "#ebf0f8", "automargin": True},
                       "colorway": ["#5b7db1", "#e07b39", "#55a868", "#c44e52", "#8172b3", "#937860"]}}


MARGIN = {"l": 10, "r": 10, "t": 34, "b": 10}
# Text sizes the label placement below plans with: a 10 px label in a wide system font (DejaVu Sans)
# and the smallest plot area the dashboard gives a memory chart (its 1024 px laptop layout).
LABEL_CHAR_PX = 6.2
LABEL_PX = 15
MIN_PLOT_PX = {"x": 360, "y": 170}


def figure(spec: dict[str, Any]) -> Chart:
    """The chart of a {"data", "layout"} spec, unvalidated (freezelab.chart_spec: sent as JSON without
    building a Plotly figure); empty layout lists (no GPU line to draw) are left out, as validation would."""
    layout = {k: v for k, v in spec.get("layout", {}).items() if v != []}
    return Chart({**spec, "layout": layout})


def _layout(title: str, height: int, **extra: Any) -> dict[str, Any]:
    """Title at the top left, legend in one row at the bottom of the figure, under the tick labels
    (axis titles only on y axes, so nothing under the plot competes with the legend). Plotly's
    defaults fill in the rest: each key here is validated on every figure, on every click."""
    return {"title": {"text": title, "x": 0.01, "y": 1, "pad": {"t": 8}, "font": {"size": 14}},
            "height": height, "margin": MARGIN, "template": TEMPLATE,
            "legend": {"orientation": "h", "y": 0, "yref": "container", "traceorder": "normal", "font": {"size": 11}},
            **extra}


# -- parameters --------------------------------------------------------------------

def message(title: str, text: str, height: int = 260) -> Chart:
    """An empty chart that says why it is empty."""
    return figure({"data": [], "layout": {**_layout(title, height), "xaxis": {"visible": False},
                   "yaxis": {"visible": False}, "annotations": [{"text": text, "showarrow": False, "x": 0.5,
                                                                  "y": 0.5, "xref": "paper", "yref": "paper"}]}})


def params_by_component(index: ModelIndex, mask: Sequence[bool]) -> Chart:
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
                     yaxis={"autorange": "reversed", "automargin": True})
    return figure({"data": data, "layout": layout})


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


def model_map(index: ModelIndex, mask: Sequence[bool]) -> Chart:
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
    return figure({"data": [trace], "layout": _layout("Model map (green: trainable; click to zoom)", 360)})


# -- memory --------------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    """How a memory chart draws bytes: in the binary unit that suits its largest value (KiB for
    the tiny model's tensors, GiB for a 7B step), so small models do not show 0.0 everywhere."""

    div: int
    unit: str

    @classmethod
    def for_bytes(cls, top: float) -> Scale:
        return cls(*units.byte_unit(top))

    def __call__(self, n: float) -> float:
        return n / self.div


def breakdown_with_overhead(estimate: MemoryEstimate, split: bool = True) -> dict[str, int]:
    """The estimate's categories plus what the device shows on top of tensors; with adapters or a
    quantized base (the analytic estimate's details) the weights split into 16-bit, quantized and adapter."""
    parts = {c: int(estimate.breakdown.get(c, 0)) for c in CATEGORIES}
    adapters = estimate.details.get("adapters") if estimate.details and split else None
    if adapters:
        shares = {"quantized_weights": adapters["quantized_bytes"], "adapter_weights": adapters["weights_bytes"]}
        parts = {"weights": parts["weights"] - sum(shares.values()), **shares,
                 **{c: v for c, v in parts.items() if c != "weights"}}
    parts["overhead"] = overhead_bytes(estimate)
    return parts


def overhead_bytes(estimate: MemoryEstimate) -> int:
    """The CUDA context and the allocator's cache: on the device, but no tensor's."""
    return max(0, estimate.device_estimate_bytes - estimate.peak_bytes)


def context_by_default(estimate: MemoryEstimate) -> bool:
    """Whether the memory charts include the CUDA context unless the user says otherwise: not when
    it outweighs the tensors (small models), where it would hide everything the plan changes."""
    return overhead_bytes(estimate) <= estimate.peak_bytes


def _axis_max(top: float, gpus: Sequence[Gpu]) -> float:
    """Show the GPU lines up to the first card that fits, unless that card dwarfs the bar."""
    fitting = [b for _, b in sorted(gpus, key=lambda g: g[1]) if b >= top]
    if fitting and fitting[0] <= 3 * top:
        return max(top, fitting[0]) * 1.06
    return top * 1.15 if top > 0 else 1.0


def _merged(names: Sequence[str]) -> str:
    """'24 GB', '40 GB', '48 GB' -> '24/40/48 GB': one label for lines too close to label apart."""
    return "/".join(n.removesuffix(" GB") for n in names) + " GB"


def _label_groups(lines: Sequence[tuple[str, float]], span: float, axis: str) -> list[tuple[str, float, float]]:
    """GPU lines whose labels would touch, merged: [(label, first value, last value)], ascending.
    On the x axis labels sit side by side (their width counts), on the y axis one above the other."""
    px = MIN_PLOT_PX[axis] / span if span > 0 else 0.0
    groups: list[list[tuple[str, float]]] = [[line] for line in sorted(lines, key=lambda g: g[1])]

    def clash(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
        if axis == "y":
            return (b[-1][1] - a[-1][1]) * px < LABEL_PX + 2
        wa, wb = (len(_merged([n for n, _ in g])) * LABEL_CHAR_PX for g in (a, b))
        ca, cb = ((g[0][1] + g[-1][1]) / 2 for g in (a, b))
        return (cb - ca) * px < (wa + wb) / 2 + 8

    merged = True
    while merged:
        merged = False
        for i in range(len(groups) - 1):
            if clash(groups[i], groups[i + 1]):
                groups[i:i + 2] = [groups[i] + groups[i + 1]]
                merged = True
                break
    return [(_merged([n for n, _ in g]) if len(g) > 1 else g[0][0], g[0][1], g[-1][1]) for g in groups]


def gpu_lines(gpus: Sequence[Gpu], limit: float, scale: Scale, axis: str) -> tuple[list[dict], list[dict]]:
    """A dotted line per GPU size below `limit` bytes, and labels that never overlap: lines too
    close to label apart share one label ('24/40/48 GB'). Vertical lines (axis "x") are labelled
    above the plot, horizontal ones (axis "y") at the plot's right end."""
    inside = [(name, scale(size)) for name, size in gpus if size <= limit]
    span = scale(limit)
    line = {"dash": "dot", "color": "#444", "width": 1}
    shapes: list[dict] = []
    for _, v in inside:
        shapes.append({"type": "line", "x0": v, "x1": v, "y0": 0, "y1": 1, "yref": "paper", "line": line}
                      if axis == "x" else
                      {"type": "line", "y0": v, "y1": v, "x0": 0, "x1": 1, "xref": "paper", "line": line})
    notes: list[dict] = []
    for text, lo, hi in _label_groups(inside, span, axis):
        font = {"size": 10, "color": "#444"}
        if axis == "x":
            half = len(text) * LABEL_CHAR_PX / 2 / (MIN_PLOT_PX["x"] / span)
            centre = (lo + hi) / 2
            anchor, x = ("left", lo) if centre - half < 0 else ("right", hi) if centre + half > span else \
                ("center", centre)
            notes.append({"x": x, "y": 1, "yref": "paper", "text": text, "showarrow": False, "xanchor": anchor,
                          "yanchor": "bottom", "yshift": 1, "font": font})
        else:
            below = hi > 0.88 * span  # near the top of the axis: under the line, inside the plot
            notes.append({"y": hi, "x": 1, "xref": "paper", "text": text, "showarrow": False, "xanchor": "right",
                          "yanchor": "top" if below else "bottom", "font": font})
    return shapes, notes


def memory_breakdown(estimate: MemoryEstimate, gpus: Sequence[Gpu], *, context: bool = True) -> Chart:
    """One stacked bar of the tensor peak by category, the CUDA context and allocator cache as a
    hatched segment after it when `context`, and a dotted line per GPU size within the axis."""
    parts = breakdown_with_overhead(estimate)
    if not context:
        parts.pop("overhead")
    top = sum(parts.values())
    scale = Scale.for_bytes(top)
    data = [{"type": "bar", "orientation": "h", "y": [""], "x": [scale(b)],
             "name": LEGEND_LABELS.get(c, CATEGORY_LABELS[c]),
             "marker": {"color": CATEGORY_COLORS[c], **({"pattern": {"shape": "/"}} if c == "overhead" else {})},
             "hovertemplate": f"{CATEGORY_LABELS[c]}: {units.nbytes(b)}<extra></extra>"}
            for c, b in parts.items() if b > 0]
    limit = _axis_max(top, gpus)
    shapes, notes = gpu_lines(gpus, limit, scale, "x")
    what = "on the GPU" if context else "of tensors"
    layout = _layout(f"Peak memory ({estimate.phase}): {units.nbytes(top)} {what}", 250, barmode="stack",
                     xaxis={"range": [0, scale(limit)], "ticksuffix": f" {scale.unit}", "automargin": True},
                     yaxis={"showticklabels": False}, shapes=shapes, annotations=notes, showlegend=True,
                     margin={**MARGIN, "t": MARGIN["t"] + LABEL_PX})
    return figure({"data": data, "layout": layout})


def memory_curve(xs: Sequence[int], estimates: Sequence[BatchPoint | MemoryEstimate], gpus: Sequence[Gpu], *,
                 current: int | None = None, context: bool = True) -> Chart:
    """Tensor peak (and, with `context`, the device total) against batch size. Batch sizes are
    whole numbers: only the computed ones are ticked. When even the first one does not fit on the
    largest GPU, the chart says so."""
    largest = max((size for _, size in gpus), default=0)
    top = max((e.device_estimate_bytes if context else e.peak_bytes for e in estimates), default=GiB)
    scale = Scale.for_bytes(top)
    data = [{"type": "scatter", "mode": "lines+markers", "x": list(xs), "y": [scale(e.peak_bytes) for e in estimates],
             "name": "tensors", "line": {"color": "#5b7db1", "dash": "dash" if context else "solid"},
             "hovertemplate": f"batch %{{x}}: %{{y:.1f}} {scale.unit} of tensors<extra></extra>"}]
    if context:
        data.insert(0, {"type": "scatter", "mode": "lines+markers", "x": list(xs), "name": "on the GPU (nvidia-smi)",
                        "y": [scale(e.device_estimate_bytes) for e in estimates], "line": {"color": "#c44e52"},
                        "hovertemplate": f"batch %{{x}}: %{{y:.1f}} {scale.unit} on the GPU<extra></extra>"})
    limit = max(_axis_max(top, gpus), top * 1.06)
    shapes, notes = gpu_lines(gpus, limit, scale, "y")
    if current is not None:
        shapes.append({"type": "line", "x0": current, "x1": current, "y0": 0, "y1": 1, "yref": "paper",
                       "line": {"color": "#2e9e5b", "width": 2}})
    if estimates and largest and estimates[0].device_estimate_bytes > largest:
        notes.append({"x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper", "showarrow": False,
                      "bgcolor": "rgba(255,255,255,0.85)", "font": {"size": 12, "color": "#b3261e"},
                      "text": f"even batch {xs[0]} needs {units.nbytes(estimates[0].device_estimate_bytes)}:<br>"
                              "more than the largest common GPU"})
    layout = _layout("Memory vs batch size", 300, xaxis=_batch_axis(xs),
                     yaxis={"range": [0, scale(limit)], "ticksuffix": f" {scale.unit}", "automargin": True},
                     shapes=shapes, annotations=notes, showlegend=True)
    return figure({"data": data, "layout": layout})


def _batch_axis(xs: Sequence[int]) -> dict[str, Any]:
    """A log axis ticked at the computed batch sizes only, with room around the first and last."""
    lo, hi = math.log10(min(xs, default=1)), math.log10(max(xs, default=1))
    pad = max(0.12 * (hi - lo), 0.3)
    return {"type": "log", "range": [lo - pad, hi + pad], "tickmode": "array", "tickvals": list(xs),
            "ticktext": [str(x) for x in xs], "automargin": True}


def gpu_count_chart(counts: Sequence[int], per_gpu: dict[str, Sequence[int]], gpus: Sequence[Gpu], *,
                    current: int | None = None) -> Chart:
    """Memory per GPU (as nvidia-smi would show it) against the number of GPUs, one line per sharding mode,
    with a dotted line per GPU size."""
    top = max((max(v) for v in per_gpu.values() if v), default=GiB)
    scale = Scale.for_bytes(top)
    data = [{"type": "scatter", "mode": "lines+markers", "x": list(counts), "y": [scale(b) for b in values],
             "name": mode, "hovertemplate": f"{mode}, %{{x}} GPUs: %{{y:.1f}} {scale.unit} per GPU<extra></extra>"}
            for mode, values in per_gpu.items()]
    limit = max(_axis_max(top, gpus), top * 1.06)
    shapes, notes = gpu_lines(gpus, limit, scale, "y")
    if current is not None:
        shapes.append({"type": "line", "x0": current, "x1": current, "y0": 0, "y1": 1, "yref": "paper",
                       "line": {"color": "#2e9e5b", "width": 2}})
    axis = {**_batch_axis(counts), "title": {"text": "GPUs"}}
    layout = _layout("Memory per GPU vs number of GPUs", 300, xaxis=axis,
                     yaxis={"range": [0, scale(limit)], "ticksuffix": f" {scale.unit}", "automargin": True},
                     shapes=shapes, annotations=notes, showlegend=True)
    return figure({"data": data, "layout": layout})


def estimate_comparison(estimates: Sequence[MemoryEstimate]) -> Chart:
    """Side-by-side bars per category for several estimates (e.g. analytic vs simulated), in the unit
    of the largest bar; the CUDA context and cache only where the first estimate would draw it."""
    context = bool(estimates) and context_by_default(estimates[0])
    parts = [breakdown_with_overhead(e, split=False) for e in estimates]  # the simulated one has no split
    keys = [c for c in parts[0] if any(p[c] for p in parts) and (c != "overhead" or context)] if parts else []
    scale = Scale.for_bytes(max((p[c] for p in parts for c in keys), default=GiB))
    data = [{"type": "bar", "name": e.method, "x": [CATEGORY_LABELS[c] for c in keys],
             "y": [scale(p[c]) for c in keys],
             "hovertemplate": f"%{{x}}: %{{y:.2f}} {scale.unit}<extra></extra>"}
            for e, p in zip(estimates, parts, strict=True)]
    title = "Estimates by category" + ("" if context else " (tensors; the CUDA context is in the table)")
    layout = _layout(title, 300, barmode="group", yaxis={"ticksuffix": f" {scale.unit}", "automargin": True})
    return figure({"data": data, "layout": layout})


# -- compute ----------------------------------------------------------------------------

FLOP_PARTS = {"forward": ("forward", "#5b7db1"), "backward_input": ("backward: input gradients", "#e07b39"),
              "backward_weight": ("backward: weight gradients", "#c44e52"),
              "recompute": ("recomputed forward (checkpointing)", "#8fb0de")}
GROUP_LABELS = {"vision": "vision tower", "projector": "projector", "llm": "language model", "lm_head": "lm_head"}


def compute_breakdown(flops: Flops) -> Chart:
    """FLOPs of one step per component, stacked by forward, backward-input, backward-weight and recompute."""
    groups = [g for g in GROUPS if flops.by_component[g].total]
    names = [GROUP_LABELS[g] for g in groups]
    data = [{"type": "bar", "orientation": "h", "y": names, "name": label, "marker": {"color": color},
             "x": [getattr(flops.by_component[g], part) / 1e12 for g in groups],
             "hovertemplate": f"%{{y}}: {label} %{{x:.3g}} TFLOP<extra></extra>"}
            for part, (label, color) in FLOP_PARTS.items() if getattr(flops.split, part)]
    layout = _layout(f"Compute per step: {units.flops(flops.counted)} (backward "
                     f"{flops.backward / flops.forward:.2f}× the forward)" if flops.forward else "Compute per step",
                     230, barmode="stack", xaxis={"title": {"text": "TFLOP"}},
                     yaxis={"autorange": "reversed"}, showlegend=True)
    return figure({"data": data, "layout": layout})


# -- sanity step ------------------------------------------------------------------------

def line_chart(ys: Sequence[float], *, title: str, y_label: str, x_label: str = "step",
               log: bool = False) -> Chart:
    xs = list(range(1, len(ys) + 1))
    data = [{"type": "scatter", "mode": "lines+markers", "x": xs, "y": list(ys), "name": y_label,
             "line": {"color": "#5b7db1"}}]
    layout = _layout(title, 260, xaxis={"title": {"text": x_label}, "dtick": 1},
                     yaxis={"title": {"text": y_label}, "type": "log" if log else "linear"}, showlegend=False)
    return figure({"data": data, "layout": layout})


def log_axis(values: Sequence[float]) -> dict[str, Any]:
    """A log axis for positive `values` with a few readable ticks: powers of ten over several
    decades, 1-2-5 steps over about one, finer steps inside one, never Plotly's crammed minor labels."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    pad = max(0.1 * (hi - lo), 0.25)
    lo, hi = lo - pad, hi + pad
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0**d for d in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas]
        ticks = [t for t in ticks if lo <= math.log10(t) <= hi]
        if len(ticks) >= 3 or mantissas[-1] == 7:
            break
    return {"type": "log", "range": [lo, hi], "tickmode": "array", "tickvals": ticks,
            "ticktext": [f"{t:.3g}" for t in ticks], "automargin": True}


def grouped_bars(values: dict[str, float], *, title: str, y_label: str, log: bool = False) -> Chart:
    """One bar per name (a handful: the components)."""
    names = list(values)
    data = [{"type": "bar", "x": names, "y": [values[n] for n in names], "marker": {"color": TRAINABLE}}]
    yaxis = log_axis(list(values.values())) if log and values else {"type": "linear"}
    layout = _layout(title, 300, yaxis={**yaxis, "title": {"text": y_label}}, showlegend=False)
    return figure({"data": data, "layout": layout})


def layer_bars(by_tower: dict[str, dict[int, float]], *, title: str, y_label: str, log: bool = False) -> Chart:
    """A value per layer, one colour per tower, over the layer index: a number axis, so Plotly thins
    its tick labels however many layers there are (category labels per bar would pile up)."""
    colors = {"vision": CATEGORY_COLORS["weights"], "llm": TRAINABLE}
    data = [{"type": "bar", "name": COMPONENT_LABELS.get(tower, tower), "x": list(layers), "y": list(layers.values()),
             "marker": {"color": colors.get(tower, "#8172b3")},
             "hovertemplate": f"{COMPONENT_LABELS.get(tower, tower)} layer %{{x}}: %{{y:.3g}}<extra></extra>"}
            for tower, layers in by_tower.items() if layers]
    values = [v for layers in by_tower.values() for v in layers.values()]
    yaxis = log_axis(values) if log and values else {"type": "linear"}
    span = max((k for layers in by_tower.values() for k in layers), default=0)
    step = next(d for d in (1, 2, 5, 10, 20) if span / d <= 10 or d == 20)  # whole layer numbers only
    layout = _layout(title, 300, barmode="group", xaxis={"title": {"text": "layer"}, "dtick": step, "tick0": 0},
                     yaxis={**yaxis, "title": {"text": y_label}}, showlegend=len(data) > 1)
    return figure({"data": data, "layout": layout})
