"""The training steps of a sanity step: forward with labels, backward, gradient norms, optimizer
step, zero_grad; peak memory reset before each step and read after it (CUDA), an out-of-memory
error turned into a record and the memory released. A cancel flag is checked between steps,
between a step's forward, backward and optimizer step, and inside the forward and the backward
(freezelab.cancellation.watch_modules): a step of a long sequence stops within one module."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from freezelab.cancellation import CancelFlag, Cancelled, checker, is_set, watch_modules
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


@dataclass
class Stopped:
    """Why a step did not finish: out of memory (torch's message) or cancelled (where)."""

    status: Status
    message: str


@dataclass
class Where:
    """The step and phase a run is in, for the message of a cancellation."""

    step: int = 0
    steps: int = 0
    phase: str = "setup"

    def __str__(self) -> str:
        return f"step {self.step} of {self.steps} ({self.phase})"


def _guarded_step(live: Live, workload: Workload, where: Where,
                  check: Callable[[], None]) -> tuple[float, bool, list[float | None]] | Stopped:
    """A training step, or why it stopped: torch's out-of-memory message (its first line) when the
    device ran out, or where it was cancelled. The caller releases memory outside the except block
    (the exception's traceback holds the step's tensors)."""
    import torch

    try:
        return _train_step(live, workload, where, check)
    except torch.OutOfMemoryError as err:
        return Stopped(Status.OUT_OF_MEMORY, str(err).splitlines()[0] if str(err) else "no detail")
    except Cancelled as err:
        return Stopped(Status.CANCELLED, str(err))


def _train_step(live: Live, workload: Workload, where: Where,
                check: Callable[[], None]) -> tuple[float, bool, list[float | None]]:
    """Forward with labels, backward, read gradient norms, optimizer step, zero_grad; `check()`
    between them (and the model's hooks call it inside forward and backward)."""
    import torch

    amp = workload.autocast != Autocast.NONE
    device_type = "cuda" if live.device.startswith("cuda") else "cpu"
    where.phase = "forward"
    with torch.autocast(device_type, dtype=torch_dtype(Dtype(workload.autocast)) if amp else None, enabled=amp):
        loss = live.call(**live.batch.inputs, use_cache=False).loss
    where.phase = "backward"
    check()
    backward = loss.requires_grad  # False when nothing trainable reaches the loss
    if backward:
        loss.backward()
    where.phase = "optimizer step"
    check()
    norms = live.grad_norms()
    if live.optimizer is not None:
        live.optimizer.step()
        live.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), backward, norms


def _oom_message(step: int, est: MemoryEstimate | None, device: str) -> str:
    import torch

    total = torch.cuda.get_device_properties(device).total_memory if device.startswith("cuda") else None
    card = f" on a {gib(total)} device" if total else ""
    said = f"the estimate was {gib(est.peak_bytes)} at the peak" if est else "no analytic estimate for this model"
    return f"out of memory in step {step}{card}; {said}. Memory was released."


def run_steps(live: Live, report: StepReport, trace: Trace, workload: Workload, steps: int,
              est: MemoryEstimate | None, cancel: CancelFlag) -> Iterator[Event]:
    """Run the steps, appending a record per step to `report` and what they saw to `trace`; stop early
    (report.status says why) when cancelled or out of memory."""
    where = Where(steps=steps)
    check = checker(cancel, lambda: str(where))
    # hooks only when a run can be cancelled (a sharded run's ranks cannot: they would leave the others waiting)
    with watch_modules(live.model, check) if cancel is not None else contextlib.nullcontext():
        yield from _steps(live, report, trace, workload, est, cancel, where, check)


def _steps(live: Live, report: StepReport, trace: Trace, workload: Workload, est: MemoryEstimate | None,
           cancel: CancelFlag, where: Where, check: Callable[[], None]) -> Iterator[Event]:
    device, steps = live.device, where.steps
    total = steps + 4
    for n in range(1, steps + 1):
        if is_set(cancel):
            report.status, report.error = Status.CANCELLED, f"cancelled before step {n} of {steps}"
            return
        yield Event(EventKind.STAGE, f"step {n} of {steps}", (1 + n) / total)
        _sync_reset(device)
        t0 = time.perf_counter()
        where.step = n
        result = _guarded_step(live, workload, where, check)
        if isinstance(result, Stopped):  # handled outside the except block (its traceback pins memory)
            error = (f"out of memory in step {n}: {result.message}" if result.status == Status.OUT_OF_MEMORY
                     else result.message)
            record = StepRecord(n, None, time.perf_counter() - t0, *_peaks(device), est.peak_bytes if est else 0,
                                error)
            live.close()
            report.status = result.status
            report.error = _oom_message(n, est, device) if result.status == Status.OUT_OF_MEMORY else \
                f"{result.message}; everything the run allocated was released"
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
