"""How many GPUs a plan needs: the per-GPU memory of its step as the number of GPUs grows, under each
sharding mode, and the smallest number of each common card on which it fits.

Analytic estimates of the same step (its stages built once) for N in COUNTS; a card fits when its own
device figure (`gpus.device_bytes_for`: tensors, allocator cache, CUDA context, its cuBLAS workspace
size) plus the method's measured error is within its memory (`verdict.judge`: FITS, not TIGHT). The
allocator's cache keeps the share of the tensor peak that the replay of the one-GPU step gave. Per-GPU memory never grows with N under ZeRO and FSDP, so the first N that
fits is the smallest; under DDP it is the same for every N > 1 (each GPU holds the whole step plus
its gradient buckets), so DDP either fits on one GPU, on any N > 1, or never.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freezelab.adapters import Adapters
from freezelab.index import ModelIndex
from freezelab.memory.analytic import spread_peaks
from freezelab.memory.device_figure import device_estimate
from freezelab.memory.gpus import GPUS, device_bytes_for
from freezelab.memory.result import Method
from freezelab.memory.verdict import Verdict, judge
from freezelab.workload import SHARDING, Sharding, Workload

COUNTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)   # one node of up to 8, then whole nodes


@dataclass(frozen=True)
class GpuCount:
    counts: tuple[int, ...]
    per_gpu: dict[str, list[int]]                  # mode -> device figure (sm90) for each count
    smallest: dict[str, dict[str, int | None]]     # mode -> card -> smallest count that fits (None: none)
    offload_optimizer: bool = False
    cublas_workspaces: int = 2

    def to_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "offload_optimizer": self.offload_optimizer,
                "per_gpu_device_bytes": {m: dict(zip(map(str, self.counts), v)) for m, v in self.per_gpu.items()},
                "smallest": self.smallest}


def _same_as(w: Workload, mode: str, n: int) -> tuple[str, int]:
    """The (mode, count) whose step is the same: one GPU is unsharded under every mode, DDP is the same
    for every N > 1, and ZeRO-3 is FSDP unless the optimizer is offloaded (FSDP2's CPUOffloadPolicy)."""
    if n == 1:
        return Sharding.DDP.value, 1
    if mode == Sharding.DDP:
        return mode, 2
    if mode == Sharding.FSDP and not w.offload_optimizer:
        return Sharding.ZERO3.value, n
    return str(mode), n


def gpu_count(index: ModelIndex, mask: list[bool], workload: Workload, *, cublas_workspaces: int = 2,
              cache_share: float = 0.0, input_require_grads: bool | None = None,
              adapters: Adapters | None = None) -> GpuCount:
    """Per-GPU memory of `workload`'s step for each mode and count (its own gpus and sharding ignored,
    its offload kept), and the smallest count of each common card that fits.
    `cublas_workspaces`: how many the step holds at its peak, `cache_share`: the allocator's cache as a
    share of the tensor peak (the estimate's own figures: `device_figure.cache_share_of`)."""
    wanted = {_same_as(workload, m, n) for m in SHARDING for n in COUNTS}
    spreads = sorted(wanted)
    peaks = dict(zip(spreads, spread_peaks(index, mask, workload, [workload.with_(gpus=n, sharding=m)
                                                                    for m, n in spreads],
                                           input_require_grads=input_require_grads, adapters=adapters)))
    per_gpu = {m: [device_estimate(peaks[_same_as(workload, m, n)], cache_share) for n in COUNTS]
               for m in SHARDING}

    def fits(b: int, g: Any) -> bool:
        need = device_bytes_for(b, cublas_workspaces, g.arch)
        return judge(need, g.total_bytes, Method.ANALYTIC, measured=g.measured).verdict is Verdict.FITS

    smallest = {m: {g.name: next((n for n, b in zip(COUNTS, per_gpu[m]) if fits(b, g)), None) for g in GPUS}
                for m in SHARDING}
    return GpuCount(COUNTS, per_gpu, smallest, workload.offload_optimizer, cublas_workspaces)

