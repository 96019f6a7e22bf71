"""The compute part of the dashboard: FLOPs per component (forward, backward-input,
backward-weight) beside the memory stack, the step time on each common GPU and why."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from freezelab import charts, units
from freezelab.adapters import Adapters
from freezelab.chart_spec import Chart
from freezelab.compute.flops import Flops, flops_followed, step_flops
from freezelab.compute.notes import explain
from freezelab.compute.timing import Efficiency, stated, step_times
from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index
from freezelab.ui.registry import elem_id, shown
from freezelab.workload import Workload

COMPUTE = "compute"  # the compute panel's ids
KEPT_VIEWS = 256     # per model index
EFFICIENCY_FIELDS = ("mfu", "bandwidth")  # the efficiency controls, in the order they are sent


@dataclass(kw_only=True)
class ComputeView:
    flops: Flops | None                                   # None: this model's FLOPs are not modelled
    figure: Chart = shown(elem_id(COMPUTE, "plot"))   # FLOPs per component, stacked by part
    time: str = shown(elem_id(COMPUTE, "time"))           # markdown: step time per GPU, assumptions, why


EFFICIENCY_IDS = tuple(elem_id(COMPUTE, name) for name in EFFICIENCY_FIELDS)


def time_md(flops: Flops, workload: Workload, eff: Efficiency) -> str:
    """Step time on each common GPU (CUDA estimates), the assumptions, and where the FLOPs go."""
    rows = step_times(flops, workload, eff)
    per = "per GPU" + (f", {workload.gpus} GPUs {workload.sharding}" if workload.gpus > 1 else "")
    table = ["| GPU | step | matmuls | other ops | optimizer |", "|---|---:|---:|---:|---:|"]
    table += [f"| {escape(r.gpu)} | **{units.duration(r.seconds)}** | {units.duration(r.matmul)} | "
              f"{units.duration(r.forward + r.backward - r.matmul)} | {units.duration(r.optimizer)} |" for r in rows]
    why = "\n".join(f"- {n}" for n in explain(flops))
    return (f"**Estimated step time {per}** (for CUDA GPUs; the Verify tab's sanity step measures it):\n\n"
            + "\n".join(table) + "\n\n<small>Assumed: " + "; ".join(stated(workload, eff)) + ".</small>\n\n" + why)


def compute_view(index: ModelIndex, mask: list[bool], workload: Workload, eff: Efficiency,
                 adapters: Adapters | None = None) -> ComputeView:
    why = flops_followed(index, workload)
    if why is not None:
        return ComputeView(flops=None, figure=charts.message("FLOPs per component", "FLOPs not modelled: see Verify"),
                           time=f"**No step-time estimate**: {escape(why)}.")
    flops = step_flops(index, mask, workload, adapters=adapters)
    return ComputeView(flops=flops, figure=charts.compute_breakdown(flops), time=time_md(flops, workload, eff))


@per_index
def _kept(index: ModelIndex) -> Kept:
    return Kept(KEPT_VIEWS)


def kept_compute_view(index: ModelIndex, mask: list[bool], workload: Workload, eff: Efficiency,
                      adapters: Adapters | None = None) -> ComputeView:
    """`compute_view(...)`, kept per index for the next event that asks for the same (a class clicks
    the same presets); a view is never modified once made, so sessions share it."""
    return _kept(index).get((bytes(mask), workload, eff, adapters),
                            lambda: compute_view(index, mask, workload, eff, adapters))
