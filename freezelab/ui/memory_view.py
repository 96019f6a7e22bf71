"""The memory part of the dashboard: analytic estimate, breakdown chart, verdict, curve, notes."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

import plotly.graph_objects as go

from freezelab import charts, units
from freezelab.index import ModelIndex
from freezelab.adapters import Adapters
from freezelab.memory.analytic import estimate
from freezelab.memory.result import MemoryEstimate
from freezelab.ui.gpu_lines import chart_lines, common_gpus
from freezelab.ui.registry import elem_id, shown
from freezelab.workload import LIMITS, Workload

CURVE_BATCHES = (1, 4, 16, 64)  # plus the current batch; each point costs one analytic estimate (~8 ms on 7B)
MEMORY = "memory"  # the memory panel's ids: the workload controls by field name, and what it shows
FIELDS = ("batch", "text_tokens", "images", "dtype", "autocast", "optimizer", "grad_ckpt", "attn",
          "gpus", "sharding", "offload_optimizer")  # the workload controls, in the order they are sent


@dataclass(kw_only=True)
class MemoryView:
    estimate: MemoryEstimate
    figure: go.Figure = shown(elem_id(MEMORY, "plot"))       # stacked breakdown with GPU lines
    verdict: str = shown(elem_id(MEMORY, "verdict"))         # HTML (id fl-verdict)
    notes: str = shown(elem_id(MEMORY, "notes"))             # markdown: the estimator's own sentences
    curve: go.Figure = shown(elem_id(MEMORY, "curve"))       # memory vs batch size


WORKLOAD_IDS = tuple(elem_id(MEMORY, name) for name in FIELDS)


def workload_shown(workload: Workload) -> dict[str, Any]:
    """{control id: value}: the workload controls showing `workload` (when an event replaces it)."""
    return {control: getattr(workload, name) for control, name in zip(WORKLOAD_IDS, FIELDS)}


def verdict_html(est: MemoryEstimate, workload: Workload) -> str:
    gpus = common_gpus()
    need = est.device_estimate_bytes
    fitting = [name for name, size in gpus if est.fits(size)]
    per = f"{units.gib(need)} per GPU"
    if workload.gpus > 1:
        per += f" × {workload.gpus} GPUs ({workload.sharding})"
    if fitting:
        head = f'<span class="fl-ok">fits</span> smallest card: <b>{escape(fitting[0])}</b>'
        rest = f"fits: {', '.join(map(escape, fitting))}"
        too_small = [name for name, size in gpus if not est.fits(size)]
        if too_small:
            rest += f"; too small: {', '.join(map(escape, too_small))}"
    else:
        head = f'<span class="fl-bad">does not fit</span> any common GPU (largest: {escape(gpus[-1][0])})'
        rest = ("to shrink it: train fewer parameters, turn on gradient checkpointing, lower the batch or "
                "sequence length, or shard across GPUs (ZeRO-3 / FSDP)")
    return (f'<div id="fl-verdict" class="fl-verdict">{head} · {per} '
            f'(tensor peak {units.gib(est.peak_bytes)}, in {escape(est.phase)})<br><small>{rest}</small></div>')


def notes_md(est: MemoryEstimate) -> str:
    return "\n".join(f"- {n}" for n in est.notes) if est.notes else ""


def curve(index: ModelIndex, mask: list[bool], workload: Workload, current: MemoryEstimate,
          adapters: Adapters | None = None) -> go.Figure:
    """Memory against batch size (`current` is the estimate at the workload's own batch), stopping
    one point past the largest common GPU and the current batch: further points only squash the
    interesting part of the chart, and each costs an estimate."""
    largest = max(size for _, size in common_gpus())
    xs: list[int] = []
    points: list[MemoryEstimate] = []
    for b in sorted({b for b in CURVE_BATCHES if b <= LIMITS["batch"]} | {workload.batch}):
        points.append(current if b == workload.batch
                      else estimate(index, mask, workload.with_(batch=b), adapters=adapters))
        xs.append(b)
        if points[-1].device_estimate_bytes > largest and b >= workload.batch:
            break
    return charts.memory_curve(xs, points, chart_lines(), x_label="batch size", current=workload.batch)


def memory_view(index: ModelIndex, mask: list[bool], workload: Workload, adapters: Adapters | None = None) -> MemoryView:
    est = estimate(index, mask, workload, adapters=adapters)
    return MemoryView(estimate=est, figure=charts.memory_breakdown(est, chart_lines()),
                      curve=curve(index, mask, workload, est, adapters), verdict=verdict_html(est, workload),
                      notes=notes_md(est))
