"""The training steps of a sanity step: forward with labels, backward, gradient norms, optimizer
step, zero_grad; peak memory reset before each step and read after it (CUDA), an out-of-memory
error turned into a record and the memory released."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from freezelab.models import torch_dtype
from freezelab.step.live import Live
from freezelab.step.report import Event, EventKind, Status, StepRecord, StepReport
from freezelab.units import gib
from freezelab.workload import Autocast, Dtype, Workload

if TYPE_CHECKING:
    import torch

    from freezelab.memory.result import MemoryEstimate


@dataclass
class Trace:
    """What the steps saw, for the checks."""

    before: list[tuple[int, int]] = field(default_factory=list)  # fingerprints before step 1
    norms: list[list[float | None]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    backward_ran: bool = False


def _sync_reset(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peaks(device: str) -> tuple[int | None, int | None]:
    if not device.startswith("cuda"):
        return None, None
    import torch

    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def _guarded_step(live: Live, workload: Workload, device: str) -> tuple[float, bool, list[float | None]] | str:
    """A training step, or torch's out-of-memory message (its first line) when the device ran out."""
    import torch

    try:
        return _train_step(live, workload, device)
    except torch.OutOfMemoryError as err:
        return str(err).splitlines()[0] if str(err) else "no detail"


def _train_step(live: Live, workload: Workload, device: str) -> tuple[float, bool, list[float | None]]:
    """Forward with labels, backward, read gradient norms, optimizer step, zero_grad."""
    import torch

    amp = workload.autocast != Autocast.NONE
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(device_type, dtype=torch_dtype(Dtype(workload.autocast)) if amp else None, enabled=amp):
        loss = live.call(**live.batch.inputs, use_cache=False).loss
    backward = loss.requires_grad  # False when nothing trainable reaches the loss
    if backward:
        loss.backward()
    norms = live.grad_norms()
    if live.optimizer is not None:
        live.optimizer.step()
        live.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), backward, norms


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def _oom_message(step: int, est: MemoryEstimate | None, device: str) -> str:
    import torch

    total = torch.cuda.get_device_properties(device).total_memory if device.startswith("cuda") else None
    card = f" on a {gib(total)} device" if total else ""
    said = f"the estimate was {gib(est.peak_bytes)} at the peak" if est else "no analytic estimate for this model"
    return f"out of memory in step {step}{card}; {said}. Memory was released."


def run_steps(live: Live, report: StepReport, trace: Trace, workload: Workload, steps: int,
              est: MemoryEstimate | None, cancel: Any) -> Iterator[Event]:
    """Run the steps, appending a record per step to `report` and what they saw to `trace`; stop early
    (report.status says why) when cancelled or out of memory."""
    device, total = live.device, steps + 4
    for n in range(1, steps + 1):
        if _is_cancelled(cancel):
            report.status, report.error = Status.CANCELLED, f"cancelled before step {n} of {steps}"
            return
        yield Event(EventKind.STAGE, f"step {n} of {steps}", (1 + n) / total)
        _sync_reset(device)
        t0 = time.perf_counter()
        result = _guarded_step(live, workload, device)
        if isinstance(result, str):  # out of memory, handled outside the except block (its traceback pins memory)
            record = StepRecord(n, None, time.perf_counter() - t0, *_peaks(device), est.peak_bytes if est else 0,
                                f"out of memory in step {n}: {result}")
            live.close()
            report.status, report.error = Status.OUT_OF_MEMORY, _oom_message(n, est, device)
            report.steps.append(record)
            yield Event(EventKind.STEP, record.error or "", (2 + n) / total, record=record)
            return
        loss, backward, norms = result
        record = StepRecord(n, loss, time.perf_counter() - t0, *_peaks(device), est.peak_bytes if est else 0)
        report.steps.append(record)
        trace.norms.append(norms)
        trace.losses.append(loss)
        trace.backward_ran = trace.backward_ran or backward
        yield Event(EventKind.STEP, f"step {n}: loss {loss:.4f}", (2 + n) / total, record=record)
