"""Before a sanity step allocates anything: its options are checked, and the memory estimate
must fit in what the device has free."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from freezelab.adapters import Adapters
from freezelab.errors import FreezelabError
from freezelab.index import ModelIndex
from freezelab.memory.analytic import estimate, followed
from freezelab.models import available_ram
from freezelab.optimizers import check_available
from freezelab.sources import Source
from freezelab.units import gib
from freezelab.workload import Sharding, Workload

if TYPE_CHECKING:
    from freezelab.memory.result import MemoryEstimate

MAX_STEPS = 100
MAX_LR = 10.0


class StepError(FreezelabError):
    """The sanity step cannot run as asked."""


class WontFitError(StepError):
    """The memory estimate says the step cannot fit; nothing was allocated."""


def check_args(source: Source, workload: Workload, steps: int, lr: float, device: str, weights: bool, *,
               sharded: bool = False) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise StepError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= MAX_LR:
        raise StepError(f"the learning rate must be a number above 0 and at most {MAX_LR:g}, got {lr!r}")
    if not sharded and (workload.gpus != 1 or workload.sharding != Sharding.DDP or workload.offload_optimizer):
        raise StepError("a sanity step in one process runs on one device: for sharding or optimizer offload "
                        "launch it with torchrun and --sharding fsdp|ddp (use gpus=1, sharding ddp, no offload "
                        "here)")
    if sharded and workload.sharding not in (Sharding.FSDP, Sharding.DDP):
        raise StepError(f"a sharded sanity step runs FSDP2 (fsdp) or DDP (ddp), not {workload.sharding}")
    if sharded and workload.offload_optimizer and workload.sharding != Sharding.FSDP:
        raise StepError("optimizer offload runs with --sharding fsdp (FSDP2's CPUOffloadPolicy); DDP has none")
    check_device(device)
    check_available(workload.optimizer, device)
    if weights and source.kind not in ("checkpoint", "tiny"):
        raise StepError(f"{source.name} is an architecture without weights; run without --weights to use "
                        "random weights")


def check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise StepError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise StepError("no CUDA device is available here; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise StepError(f"{device}: only {torch.cuda.device_count()} CUDA device(s) here")


def free_bytes(device: str) -> tuple[int, str]:
    """What `device` can still hold (the allocator's cached but unused blocks included), and its name."""
    if device == "cpu":
        return available_ram(), "free RAM"
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + reusable, f"free memory on {device}"


def gate(index: ModelIndex, mask: list[bool], workload: Workload, device: str,
         adapters: Adapters | None = None) -> MemoryEstimate | None:
    """The analytic estimate of the step; a WontFitError when its peak exceeds the free memory. For a model
    the analytic estimate does not follow yet (None is returned), the weights alone must fit."""
    have, where = free_bytes(device)
    if followed(index, workload) is not None:
        weights = index.total_params * (4 if workload.dtype == "fp32" else 2)
        if weights > have:
            raise WontFitError(f"{index.name}: its weights alone need {gib(weights)} but only {gib(have)} of "
                               f"{where} is left")
        return None
    est = estimate(index, mask, workload, adapters=adapters)
    if est.peak_bytes > have:
        raise WontFitError(
            f"{index.name}: this step needs about {gib(est.peak_bytes)} at its peak ({est.phase}) by the "
            f"memory estimate, but only {gib(have)} of {where} is left; reduce the batch or sequence, turn on "
            "gradient checkpointing, or train fewer parameters")
    return est
