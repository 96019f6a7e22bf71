"""The memory part of the dashboard: analytic estimate, breakdown chart, verdict, curve, notes."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from freezelab import charts, units
from freezelab.adapters import Adapters
from freezelab.chart_spec import Chart
from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index
from freezelab.memory.analytic import cache_share_of, estimate, followed
from freezelab.memory.batch_curve import batch_curve
from freezelab.memory.gpu_count import GpuCount, gpu_count
from freezelab.memory.gpus import fits_table
from freezelab.memory.result import MemoryEstimate
from freezelab.memory.verdict import Verdict, allocator_hint, error_of
from freezelab.tokens import sample_layouts
from freezelab.ui.context_view import workload_text
from freezelab.ui.gpu_lines import chart_lines, common_gpus
from freezelab.ui.registry import CLEARED, elem_id, shown
from freezelab.workload import LIMITS, Workload, WorkloadError, sizes_text

CURVE_BATCHES = (1, 4, 16, 64)  # plus the current batch; each point costs one walk of the step
                                # (freezelab.memory.batch_curve: about a millisecond on 7B)
KEPT_ESTIMATES = 256  # per model index: a class clicking the same presets and batch sizes finds them here
MEMORY = "memory"  # the memory panel's ids: the workload controls by field name, and what it shows
FIELDS = ("batch", "text_tokens", "images", "dtype", "autocast", "optimizer", "grad_ckpt", "attn",
          "gpus", "sharding", "offload_optimizer", "image_sizes", "frames")  # the controls, in the order sent


@dataclass(kw_only=True)
class MemoryView:
    estimate: MemoryEstimate | None                          # None: the analytic estimate does not follow it
    figure: Chart = shown(elem_id(MEMORY, "plot"))       # stacked breakdown with GPU lines
    verdict: str = shown(elem_id(MEMORY, "verdict"))         # HTML (id fl-verdict)
    notes: str = shown(elem_id(MEMORY, "notes"))             # markdown: the estimator's own sentences
    curve: Chart = shown(elem_id(MEMORY, "curve"))       # memory vs batch size
    context: bool = shown(elem_id(MEMORY, "context"))        # the charts include the CUDA context + cache
    error: str = shown(elem_id(MEMORY, "error"), default="")  # HTML: a refused workload value, at its field
    gpu_count: Any = shown(elem_id(MEMORY, "gpu_count"))  # memory per GPU vs number of GPUs, per mode (or CLEARED)
    min_gpus: Any = shown(elem_id(MEMORY, "min_gpus"))  # markdown: smallest number of each card per mode (or CLEARED)
    # (both None while the page's how-many-GPUs section is closed: not computed, the page keeps its old ones)
    tokens: str = shown(elem_id(MEMORY, "tokens"))           # markdown: what the images of a sample become


WORKLOAD_IDS = tuple(elem_id(MEMORY, name) for name in FIELDS)
RESULTS = "fl-results"  # the class of every column whose content a refused workload makes stale


def control_id(name: str) -> str:
    """The page id of a workload control (style.CSS outlines it while its value is refused)."""
    return f"fl-w-{name}"


LABELS = {"batch": "batch", "text_tokens": "text tokens", "images": "images", "dtype": "dtype",
          "autocast": "autocast", "optimizer": "optimizer", "grad_ckpt": "gradient checkpointing",
          "attn": "attention", "gpus": "GPUs", "sharding": "sharding",
          "offload_optimizer": "offload optimizer", "image_sizes": "image sizes",
          "frames": "video frames"}  # the controls' labels, by workload field


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


def _card(row: dict[str, Any]) -> str:
    spare = row["headroom_bytes"]
    left = f"{units.gib(spare)} left" if spare >= 0 else f"{units.gib(-spare)} short"
    return f"{escape(row['gpu'])} ({left}{'' if row['measured'] else ', assumed'})"


def verdict_html(est: MemoryEstimate, workload: Workload, stale: str = "") -> str:
    """The verdict per common card, with the estimate's measured error as the margin: fits (the figure
    plus its error fits), tight (the card is inside the error band), does not fit; with `stale` (why),
    marked as out of date."""
    rows = sorted(fits_table(est), key=lambda r: r["memory_bytes"])
    by = {v: [r for r in rows if r["verdict"] == v] for v in Verdict}
    band = f"± {100 * error_of(est.method):.1f}% (measured)"
    per = f"{units.gib(est.device_estimate_bytes)} per GPU {band}"
    if workload.gpus > 1:
        per += f" × {workload.gpus} GPUs ({workload.sharding})"
    if by[Verdict.FITS]:
        head = f'<span class="fl-ok">fits</span> smallest card: <b>{_card(by[Verdict.FITS][0])}</b>'
    elif by[Verdict.TIGHT]:
        head = (f'<span class="fl-tight">tight</span> <b>{_card(by[Verdict.TIGHT][-1])}</b>: inside the '
                "estimate's error band")
    else:
        head = f'<span class="fl-bad">does not fit</span> any common GPU (largest: {escape(rows[-1]["gpu"])})'
    rest = [f"{label}: {', '.join(_card(r) for r in by[v])}" for v, label in
            ((Verdict.FITS, "fits"), (Verdict.TIGHT, "tight"), (Verdict.DOES_NOT_FIT, "too small")) if by[v]]
    if not by[Verdict.FITS]:
        rest.append("to shrink it: train fewer parameters, turn on gradient checkpointing, lower the batch or "
                    "sequence length, or shard across GPUs (ZeRO-3 / FSDP)")
    hint = allocator_hint(est)
    if hint:
        rest.append(escape(hint))
    rest.append("measured on sm90 (H100, H200); other cards assume the same CUDA context and allocator")
    note = f'<span class="fl-stale-badge">out of date</span> {escape(stale)}<br>' if stale else ""
    return (f'<div id="fl-verdict" class="fl-verdict{" fl-stale" if stale else ""}">{note}{head} · {per} '
            f'(tensor peak {units.nbytes(est.peak_bytes)}, in {escape(est.phase)})<br><small>'
            + "<br>".join(rest) + "</small></div>")


def field_error_html(refused: dict[str, str], last_valid: Workload) -> str:
    """A refused workload value, shown under the workload controls (the control itself is outlined,
    see style.CSS): which field, why, and that the results below still show the last valid workload."""
    lines = "".join(f'<li data-field="{escape(name)}"><b>{escape(LABELS.get(name, name))}</b>: '
                    f"{escape(message.removeprefix(name + ' '))}</li>" for name, message in refused.items())
    return (f'<div class="fl-field-error" role="alert"><ul>{lines}</ul>The verdict and charts below are out '
            f"of date until this is fixed: they still show {escape(workload_text(last_valid))}.</div>")


def refused_fields(current: Workload, values: dict[str, Any], err: WorkloadError) -> dict[str, str]:
    """{field: message} for the values that make the workload invalid: each changed value tried
    alone on the current workload; a refused combination (autocast with a 16-bit dtype) is blamed
    on every changed value."""
    changed = {k: v for k, v in values.items() if k in LABELS and v != getattr(current, k)}
    refused = {}
    for name, value in changed.items():
        try:
            current.with_(**{name: value})
        except WorkloadError as one:
            refused[name] = str(one)
    return refused or dict.fromkeys(changed or ["workload"], str(err))


@per_index
def _estimates(index: ModelIndex) -> Kept:
    return Kept(KEPT_ESTIMATES)


@per_index
def _gpu_counts(index: ModelIndex) -> Kept:
    return Kept(KEPT_ESTIMATES)


def kept_estimate(index: ModelIndex, mask: list[bool], workload: Workload,
                  adapters: Adapters | None = None) -> MemoryEstimate:
    """`estimate(index, mask, workload, adapters=adapters)`, kept for the next event that asks for the
    same (a class clicks the same presets; undo returns to a plan)."""
    return _estimates(index).get((bytes(mask), workload, adapters),
                                 lambda: estimate(index, mask, workload, adapters=adapters))


def kept_gpu_count(index: ModelIndex, mask: list[bool], workload: Workload, cublas_workspaces: int,
                   adapters: Adapters | None = None, cache_share: float = 0.0) -> GpuCount:
    """`gpu_count(...)`, kept likewise; the workload's own GPU count and sharding do not change it."""
    key = (bytes(mask), workload.with_(gpus=1, sharding="ddp"), cublas_workspaces, adapters, cache_share)
    return _gpu_counts(index).get(key, lambda: gpu_count(index, mask, workload, cublas_workspaces=cublas_workspaces,
                                                         cache_share=cache_share, adapters=adapters))


def notes_md(est: MemoryEstimate) -> str:
    return "\n".join(f"- {n}" for n in est.notes) if est.notes else ""


def curve(index: ModelIndex, mask: list[bool], workload: Workload, current: MemoryEstimate,
          context: bool, adapters: Adapters | None = None) -> Chart:
    """Memory against batch size (`current` is the estimate at the workload's own batch), stopping
    one point past the largest common GPU and the current batch: further points only squash the
    interesting part of the chart, and each costs a walk of the step."""
    largest = max(size for _, size in common_gpus())
    batches = sorted({b for b in CURVE_BATCHES if b <= LIMITS["batch"]} | {workload.batch})
    points = batch_curve(index, mask, workload, current, batches, largest, adapters)
    return charts.memory_curve([p.batch for p in points], points, chart_lines(), current=workload.batch,
                               context=context)


def not_followed(why: str, tokens: str) -> MemoryView:
    """The memory panel for a model the analytic estimate does not follow: why, and where to go instead."""
    verdict = (f'<div id="fl-verdict" class="fl-verdict"><span class="fl-bad">no analytic estimate</span> '
               f"{escape(why)}. Verify → <b>Run simulated estimate</b> gives this plan's memory.</div>")
    empty = "the analytic estimate does not follow this family yet: see Verify"
    return MemoryView(estimate=None, figure=charts.message("memory breakdown", empty),
                      curve=charts.message("memory vs batch size", empty), verdict=verdict, notes="", tokens=tokens,
                      context=False, gpu_count=charts.message("memory per GPU vs number of GPUs", empty),
                      min_gpus="")


def min_gpus_md(count: GpuCount) -> str:
    """The smallest number of each common card per sharding mode, as a markdown table."""
    modes = list(count.smallest)
    rows = [f"| GPU | {' | '.join(modes)} |", "|---|" + "---:|" * len(modes)]
    for card in next(iter(count.smallest.values())):
        cells = ["–" if count.smallest[m][card] is None else str(count.smallest[m][card]) for m in modes]
        rows.append(f"| {escape(card)} | {' | '.join(cells)} |")
    off = ", optimizer offloaded" if count.offload_optimizer else ""
    return (f"**Smallest number of GPUs that fits** (per GPU: this batch{off}; – : not even {count.counts[-1]})\n\n"
            + "\n".join(rows))


def memory_view(index: ModelIndex, mask: list[bool], workload: Workload, context: bool | None = None,
                gpu_count: bool = True, adapters: Adapters | None = None) -> MemoryView:
    """The estimate and its charts; `context` None: the CUDA context is drawn unless it outweighs the tensors;
    `adapters`: the plan's adapters and quantized base. `gpu_count` False: how many GPUs is left out
    (CLEARED: its section, closed, is emptied; opening it computes it); it costs twenty walks of the
    step, more than the rest together."""
    tokens = tokens_md(index, workload)
    why = followed(index, workload)
    if why is not None:
        return not_followed(why, tokens)
    est = kept_estimate(index, mask, workload, adapters)
    shown_context = charts.context_by_default(est) if context is None else context
    count = (kept_gpu_count(index, mask, workload, est.cublas_workspaces, adapters, cache_share_of(est))
             if gpu_count else None)
    return MemoryView(estimate=est, figure=charts.memory_breakdown(est, chart_lines(), context=shown_context),
                      curve=curve(index, mask, workload, est, shown_context, adapters),
                      verdict=verdict_html(est, workload), notes=notes_md(est), context=shown_context,
                      gpu_count=CLEARED if count is None else charts.gpu_count_chart(
                          count.counts, count.per_gpu, chart_lines(), current=workload.gpus),
                      min_gpus=CLEARED if count is None else min_gpus_md(count), tokens=tokens)
