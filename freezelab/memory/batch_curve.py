"""Memory against batch size: the dashboard's curve, one point per batch size.

A point needs only the step's tensor peak at that batch (`analytic.spread_peaks`: the stages built
and walked once, no moments kept, no notes) and the device figure with the allocator's cache taken
as the share the current batch's replayed estimate has: exactly what `estimate(..., cache_share=share)`
gives for that batch (`analytic.with_cache_share`), for a fraction of its time. The peaks are kept per
index (`freezelab.index_memo`), by mask, workload and adapters: a batch edit or another session's
same plan finds them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from freezelab.adapters import Adapters
from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index
from freezelab.memory.analytic import spread_peaks
from freezelab.memory.cuda_facts import CUDA_CONTEXT
from freezelab.memory.result import MemoryEstimate
from freezelab.workload import Workload

PER_INDEX = 4096   # peaks kept per index (an integer each)


@dataclass(frozen=True)
class BatchPoint:
    batch: int
    peak_bytes: int              # the tensor peak
    device_estimate_bytes: int   # what nvidia-smi would show


@per_index
def _peaks(index: ModelIndex) -> Kept:
    return Kept(PER_INDEX)


def batch_peak(index: ModelIndex, mask: list[bool], w: Workload, adapters: Adapters | None = None) -> int:
    """`estimate(index, mask, w, adapters=adapters).peak_bytes`, kept."""
    return _peaks(index).get((bytes(mask), w, adapters),
                             lambda: spread_peaks(index, mask, w, [w], adapters=adapters)[0])


def batch_curve(index: ModelIndex, mask: list[bool], workload: Workload, current: MemoryEstimate,
                batches: Iterable[int], stop_above: int, adapters: Adapters | None = None) -> list[BatchPoint]:
    """A point per batch size in `batches` (ascending; `current` is the estimate at the workload's own
    batch), stopping at the first one past the workload's batch whose device figure is above `stop_above`."""
    share = current.details.get("allocator_cache_bytes", 0) / max(1, current.peak_bytes)
    points: list[BatchPoint] = []
    for b in batches:
        if b == workload.batch:
            point = BatchPoint(b, current.peak_bytes, current.device_estimate_bytes)
        else:
            peak = batch_peak(index, mask, workload.with_(batch=b), adapters)
            point = BatchPoint(b, peak, peak + int(peak * share) + CUDA_CONTEXT)
        points.append(point)
        if point.device_estimate_bytes > stop_above and b >= workload.batch:
            break
    return points
