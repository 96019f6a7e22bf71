"""What a sanity step reports: one record per training step, the whole run's report, and the
progress events a run streams."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from freezelab.checks import Check, all_passed


class Status(StrEnum):
    """How a run ended."""

    OK = "ok"                          # every step ran (the checks say whether the plan holds)
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out_of_memory"


class Weights(StrEnum):
    """Where the run's weights came from."""

    RANDOM = "random"
    CHECKPOINT = "checkpoint"


class EventKind(StrEnum):
    """What a progress event announces."""

    STAGE = "stage"                    # a phase starts (building, a step, checking)
    STEP = "step"                      # a step ended; the event holds its record
    DONE = "done"                      # the run ended; the event holds the report


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: non-finite numbers become null (the checks name them)."""
    return x if x is None or math.isfinite(x) else None


@dataclass(frozen=True)
class StepRecord:
    step: int                              # 1-based
    loss: float | None                     # None when the step failed
    seconds: float
    peak_allocated_bytes: int | None       # CUDA max_memory_allocated over the step; None on CPU
    peak_reserved_bytes: int | None
    estimate_bytes: int                    # the estimator's steady-state peak
    error: str | None = None

    @property
    def steady(self) -> bool:
        return self.step >= 2

    @property
    def relative_error(self) -> float | None:
        """(measured - estimate) / estimate."""
        if self.peak_allocated_bytes is None or not self.estimate_bytes:
            return None
        return (self.peak_allocated_bytes - self.estimate_bytes) / self.estimate_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss": _finite(self.loss), "steady": self.steady,
                "relative_error": self.relative_error}


@dataclass
class StepReport:
    model: str
    model_class: str
    device: str
    device_name: str
    weights: Weights
    workload: dict[str, Any]
    batch: dict[str, Any]
    plan: dict[str, Any]
    trainable_params: int
    trainable_tensors: int
    total_params: int
    lr: float
    seed: int
    steps: list[StepRecord] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    grad_norms: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, Any] = field(default_factory=dict)  # method, peak_bytes, device_estimate_bytes, phase
    time_estimate: dict[str, Any] = field(default_factory=dict)  # gpu, seconds (per step), note, assumptions
    input_grad_hooks: int = 0
    warnings: list[str] = field(default_factory=list)
    status: Status = Status.OK
    error: str | None = None
    seconds: float = 0.0
    distributed: dict[str, Any] | None = None  # a sharded run: world size, engine, every rank's summary
    adapter_params: int = 0            # of total_params, in adapters (PEFT's count: base plus adapters)

    @property
    def base_params(self) -> int:
        return self.total_params - self.adapter_params

    @property
    def passed(self) -> bool:
        ranks_ok = self.distributed is None or bool(self.distributed.get("all_ranks_passed"))
        return self.status == Status.OK and bool(self.checks) and all_passed(self.checks) and ranks_ok

    @property
    def measured_seconds(self) -> float | None:
        """The steady-state step's time (the last step from step 2 on), to compare with `time_estimate`."""
        steady = [s.seconds for s in self.steps if s.steady and s.error is None]
        return steady[-1] if steady else None

    def to_dict(self) -> dict[str, Any]:
        skipped = ("steps", "checks", "grad_norms") + (("distributed",) if self.distributed is None else ())
        data = {k: v for k, v in asdict(self).items() if k not in skipped}
        data["base_params"] = self.base_params
        data["measured_seconds"] = self.measured_seconds
        data["weights"], data["status"] = str(self.weights), str(self.status)
        data["steps"] = [s.to_dict() for s in self.steps]
        data["checks"] = {name: c.to_dict() for name, c in self.checks.items()}
        data["grad_norms"] = _clean(self.grad_norms)
        data["passed"] = self.passed
        return data


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    kind: EventKind
    message: str
    fraction: float                        # rough progress, 0..1
    record: StepRecord | None = None
    report: StepReport | None = None
