"""The memory part of the dashboard: analytic estimate, breakdown chart, verdict, curve, notes."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

import plotly.graph_objects as go

from freezelab import charts, units
from freezelab.index import ModelIndex
from freezelab.memory.analytic import estimate, followed
from freezelab.memory.result import MemoryEstimate
from freezelab.tokens import sample_layouts
from freezelab.ui.gpu_lines import chart_lines, common_gpus
from freezelab.ui.registry import elem_id, shown
from freezelab.workload import LIMITS, Workload, sizes_text

CURVE_BATCHES = (1, 4, 16, 64)  # plus the current batch; each point costs one analytic estimate (~8 ms on 7B)
MEMORY = "memory"  # the memory panel's ids: the workload controls by field name, and what it shows
FIELDS = ("batch", "text_tokens", "images", "dtype", "autocast", "optimizer", "grad_ckpt", "attn",
          "gpus", "sharding", "offload_optimizer", "image_sizes", "frames")  # the controls, in the order sent


@dataclass(kw_only=True)
class MemoryView:
    estimate: MemoryEstimate | None                          # None: the analytic estimate does not follow it
    figure: go.Figure = shown(elem_id(MEMORY, "plot"))       # stacked breakdown with GPU lines
    verdict: str = shown(elem_id(MEMORY, "verdict"))         # HTML (id fl-verdict)
    notes: str = shown(elem_id(MEMORY, "notes"))             # markdown: the estimator's own sentences
    curve: go.Figure = shown(elem_id(MEMORY, "curve"))       # memory vs batch size
    tokens: str = shown(elem_id(MEMORY, "tokens"))           # markdown: what the images of a sample become


WORKLOAD_IDS = tuple(elem_id(MEMORY, name) for name in FIELDS)


def control_value(workload: Workload, name: str) -> Any:
    """What the control of field `name` shows (image sizes as text: "336x672, 672x672")."""
    return sizes_text(workload) if name == "image_sizes" else getattr(workload, name)


def workload_shown(workload: Workload) -> dict[str, Any]:
    """{control id: value}: the workload controls showing `workload` (when an event replaces it)."""
    return {control: control_value(workload, name) for control, name in zip(WORKLOAD_IDS, FIELDS)}


def tokens_md(index: ModelIndex, workload: Workload) -> str:
    """The token layout of one sample's images (base grid, tiles, newlines, unpadding, merges)."""
    layouts = sample_layouts(index.config, workload, index.processor)
    if not layouts:
        return "Text only: no image tokens."
    lines = []
    for i, lay in enumerate(layouts, 1):
        what = "video" if lay.frames > 1 or (workload.frames and i == len(layouts)) else f"image {i}"
        facts = lay.describe()
        lines.append(f"**{what}**: {escape(facts[0])}")
        lines += [f"  - {escape(f)}" for f in facts[1:]]
    total = sum(lay.sequence_tokens for lay in layouts)
    lines.append(f"\nImage positions per sample: **{total:,}** of {total + workload.text_tokens:,} tokens.")
    return "\n".join(lines)


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


def curve(index: ModelIndex, mask: list[bool], workload: Workload, current: MemoryEstimate) -> go.Figure:
    """Memory against batch size (`current` is the estimate at the workload's own batch), stopping
    one point past the largest common GPU and the current batch: further points only squash the
    interesting part of the chart, and each costs an estimate."""
    largest = max(size for _, size in common_gpus())
    xs: list[int] = []
    points: list[MemoryEstimate] = []
    for b in sorted({b for b in CURVE_BATCHES if b <= LIMITS["batch"]} | {workload.batch}):
        points.append(current if b == workload.batch else estimate(index, mask, workload.with_(batch=b)))
        xs.append(b)
        if points[-1].device_estimate_bytes > largest and b >= workload.batch:
            break
    return charts.memory_curve(xs, points, chart_lines(), x_label="batch size", current=workload.batch)


def not_followed(why: str, tokens: str) -> MemoryView:
    """The memory panel for a model the analytic estimate does not follow: why, and where to go instead."""
    verdict = (f'<div id="fl-verdict" class="fl-verdict"><span class="fl-bad">no analytic estimate</span> '
               f"{escape(why)}. Verify → <b>Run simulated estimate</b> gives this plan's memory.</div>")
    empty = "the analytic estimate does not follow this family yet: see Verify"
    return MemoryView(estimate=None, figure=charts.message("memory breakdown", empty),
                      curve=charts.message("memory vs batch size", empty), verdict=verdict, notes="", tokens=tokens)


def memory_view(index: ModelIndex, mask: list[bool], workload: Workload) -> MemoryView:
    tokens = tokens_md(index, workload)
    why = followed(index, workload)
    if why is not None:
        return not_followed(why, tokens)
    est = estimate(index, mask, workload)
    return MemoryView(estimate=est, figure=charts.memory_breakdown(est, chart_lines()),
                      curve=curve(index, mask, workload, est), verdict=verdict_html(est, workload), notes=notes_md(est),
                      tokens=tokens)
