"""The sanity step: a few real training steps under a plan, then a check of
every parameter (see freezelab.checks).

The protocol is the one of the reference GPU measurements, so
measured peaks compare with the memory estimator's: model built in the
parameter dtype directly on the device, plan applied, optimizer created
before step 1; per step forward with labels, backward, optimizer.step(),
zero_grad(set_to_none=True); peak memory reset before each step, step >= 2
is the steady state (optimizer state exists).

`iter_step` streams Events (a Gradio generator can relay them); `run_step`
consumes them and returns the StepReport. Each run builds its own model, so
a model cached elsewhere is never mutated, and releases everything it
allocated when it ends, however it ends (finished, cancelled, out of memory,
abandoned generator).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezelab.batch import Batch, Example, example, load_processor, synthetic
from freezelab.checks import Check, Context, Observation, all_passed, grad_norms, run_checks
from freezelab.errors import FreezelabError
from freezelab.fingerprint import fingerprints
from freezelab.index import ModelIndex
from freezelab.models import available_ram, build, check_room, index_of, load_weights, torch_dtype
from freezelab.optimizers import check_available, make_optimizer
from freezelab.plans import Plan, Resolution, apply, resolve
from freezelab.sources import Source
from freezelab.units import gib
from freezelab.workload import Workload

if TYPE_CHECKING:
    import torch

    from freezelab.memory.result import MemoryEstimate

MAX_STEPS = 100
MAX_LR = 10.0
# Below this size a CPU step is dominated by thread-pool overhead, and on a busy machine
# several intra-op threads make it 5-10x slower (measured: tiny, 2 cores under load).
SINGLE_THREAD_PARAMS = 50_000_000


class StepError(FreezelabError):
    """The sanity step cannot run as asked."""


class WontFitError(StepError):
    """The memory estimate says the step cannot fit; nothing was allocated."""


# -- results ------------------------------------------------------------------------

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
    estimate_bytes: int | None             # the estimator's steady-state peak
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
    weights: str                           # "random" | "checkpoint"
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
    estimate: dict[str, Any] | None = None
    input_grad_hooks: int = 0
    warnings: list[str] = field(default_factory=list)
    status: str = "ok"                     # "ok" | "cancelled" | "out_of_memory"
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "ok" and bool(self.checks) and all_passed(self.checks)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("steps", "checks", "grad_norms")}
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
    kind: str                              # "stage" | "step" | "done"
    message: str
    fraction: float                        # rough progress, 0..1
    record: StepRecord | None = None
    report: StepReport | None = None


# -- validation and the memory gate (nothing allocated yet) ---------------------------

def _check_args(source: Source, workload: Workload, steps: int, lr: float, device: str, weights: bool) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise StepError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= MAX_LR:
        raise StepError(f"the learning rate must be a number above 0 and at most {MAX_LR:g}, got {lr!r}")
    if workload.gpus != 1 or workload.sharding != "ddp" or workload.offload_optimizer:
        raise StepError("the sanity step runs on one device: multi-GPU sharding and optimizer offload are "
                        "estimated, not run (use gpus=1, sharding ddp, no offload)")
    _check_device(device)
    check_available(workload.optimizer, device)
    if weights and source.kind not in ("checkpoint", "tiny"):
        raise StepError(f"{source.name} is an architecture without weights; run without --weights to use "
                        "random weights")


def _check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise StepError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise StepError("no CUDA device is available here; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise StepError(f"{device}: only {torch.cuda.device_count()} CUDA device(s) here")


def _estimate(index: ModelIndex, mask: list[bool], workload: Workload) -> MemoryEstimate | None:
    try:  # written alongside this module; until it lands the step only checks the weights
        from freezelab.memory.analytic import estimate
    except ImportError:
        return None
    return estimate(index, mask, workload)


def _free_bytes(device: str) -> tuple[int, str]:
    if device == "cpu":
        return available_ram(), "free RAM"
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + reusable, f"free memory on {device}"


def _gate(index: ModelIndex, mask: list[bool], workload: Workload, device: str) -> MemoryEstimate | None:
    """Refuse before allocating when the step cannot fit."""
    est = _estimate(index, mask, workload)
    if est is None:
        check_room(index, workload.dtype, device)
        return None
    have, where = _free_bytes(device)
    if est.peak_bytes > have:
        raise WontFitError(
            f"{index.name}: this step needs about {gib(est.peak_bytes)} at its peak ({est.phase}) by the "
            f"memory estimate, but only {gib(have)} of {where} is left; reduce the batch or sequence, turn on "
            "gradient checkpointing, or train fewer parameters")
    return est


# -- model and batch ---------------------------------------------------------------

def _model(source: Source, workload: Workload, device: str, seed: int, weights: bool) -> tuple[torch.nn.Module, str]:
    if weights and source.kind == "checkpoint":
        return load_weights(source, dtype=workload.dtype, device=device), "checkpoint"
    return build(source, device=device, dtype=workload.dtype, seed=seed), "random"


def _configure(model: torch.nn.Module, workload: Workload) -> None:
    """Attention, train mode, checkpointing exactly as the calibration protocol sets them."""
    if model.config._attn_implementation != workload.attn:
        try:
            model.set_attn_implementation(workload.attn)
        except (ValueError, ImportError) as err:
            raise StepError(f"attention {workload.attn!r} is not available for this model: {err}") from None
    model.train()
    if workload.grad_ckpt:
        enable = getattr(model, "activation_checkpointing_enable", None)  # the non-deprecated name in 5.x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        # A fresh model has no input-grad hooks; checkpointing's disable() would leave them (pitfalls).
        model.disable_input_require_grads()


def _input_grad_hooks(model: torch.nn.Module) -> int:
    return len(getattr(model, "_require_grads_hooks", None) or [])


def _reentrant(model: torch.nn.Module) -> bool:
    """Whether some block checkpoints reentrantly (torch's default when use_reentrant is not given)."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                return True
    return False


def _pixel_dtype(workload: Workload) -> torch.dtype:
    return torch_dtype(workload.autocast if workload.autocast != "none" else workload.dtype)


def _processor_dir(source: Source) -> Path:
    if source.kind not in ("checkpoint", "config"):
        raise StepError(f"a real example needs a checkpoint directory with a processor/tokenizer; "
                        f"{source.name} has none (run without an image for a synthetic batch)")
    path = Path(source.spec).expanduser()
    return path if path.is_dir() else path.parent


def _batch(source: Source, index: ModelIndex, workload: Workload, device: str, seed: int,
           item: Example | None) -> Batch:
    if item is None:
        return synthetic(index.config, workload, device=device, pixel_dtype=_pixel_dtype(workload), seed=seed)
    processor = load_processor(_processor_dir(source))
    return example(processor, item, workload, device=device, pixel_dtype=_pixel_dtype(workload))


# -- one step --------------------------------------------------------------------------

class _Live:
    """Everything a run allocates, so one place can release it."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.model: Any = None
        self.optimizer: Any = None
        self.batch: Batch | None = None
        self.tensors: list[Any] = []       # the model's parameters in index order

    def close(self) -> None:
        import weakref

        for t in self.tensors:
            t.grad = None
        alive = [weakref.ref(x) for x in (self.model, self.optimizer) if x is not None]
        self.model = self.optimizer = self.batch = None
        self.tensors = []
        if any(ref() is not None for ref in alive):
            gc.collect()  # only when a reference cycle keeps them: a full collection costs ~0.25 s
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _norms(tensors: list[torch.Tensor]) -> list[float | None]:
    """Gradient L2 norm per parameter (None: no gradient), read before zero_grad; one host sync."""
    import torch

    have = [i for i, t in enumerate(tensors) if t.grad is not None]
    out: list[float | None] = [None] * len(tensors)
    if have:
        values = torch.stack([torch.linalg.vector_norm(tensors[i].grad, dtype=torch.float32) for i in have])
        for i, v in zip(have, values.cpu().tolist()):
            out[i] = v
    return out


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


def _guarded_step(live: _Live, workload: Workload, device: str) -> tuple[float, bool, list[float | None]] | str:
    """A training step, or torch's out-of-memory message (its first line) when the device ran out."""
    import torch

    try:
        return _train_step(live, workload, device)
    except torch.OutOfMemoryError as err:
        return str(err).splitlines()[0] if str(err) else "no detail"


def _train_step(live: _Live, workload: Workload, device: str) -> tuple[float, bool, list[float | None]]:
    """Forward with labels, backward, read gradient norms, optimizer step, zero_grad."""
    import torch

    amp = workload.autocast != "none"
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(device_type, dtype=torch_dtype(workload.autocast) if amp else None, enabled=amp):
        loss = live.model(**live.batch.inputs, use_cache=False).loss
    backward = loss.requires_grad  # False when nothing trainable reaches the loss
    if backward:
        loss.backward()
    norms = _norms(live.tensors)
    if live.optimizer is not None:
        live.optimizer.step()
        live.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), backward, norms


# -- the run --------------------------------------------------------------------------

@contextlib.contextmanager
def _cpu_threads(index: ModelIndex, device: str) -> Iterator[None]:
    """One intra-op thread for a small model on the CPU, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    small = device == "cpu" and index.total_params < SINGLE_THREAD_PARAMS
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(device)


def _report(index: ModelIndex, res: Resolution, workload: Workload, batch: Batch, device: str, lr: float,
            seed: int, est: MemoryEstimate | None) -> StepReport:
    trainable = [i for i, on in enumerate(res.mask) if on]
    return StepReport(
        model=index.name, model_class=index.model_class, device=device, device_name=_device_name(device),
        weights="random", workload=workload.to_dict(), batch=batch.describe(), plan=res.plan.to_dict(),
        trainable_params=sum(index.numels[i] for i in trainable), trainable_tensors=len(trainable),
        total_params=index.total_params, lr=lr, seed=seed, warnings=list(res.warnings),
        estimate=None if est is None else {"method": est.method, "peak_bytes": est.peak_bytes,
                                           "device_estimate_bytes": est.device_estimate_bytes, "phase": est.phase})


def _observe(live: _Live, res: Resolution, before: list[tuple[int, int]], norms: list[list[float | None]],
             losses: list[float]) -> Observation:
    after = fingerprints(live.tensors)
    position = {id(t): i for i, t in enumerate(live.tensors)}
    counts, foreign = [0] * len(live.tensors), 0
    for group in live.optimizer.param_groups if live.optimizer is not None else []:
        for p in group["params"]:
            if id(p) in position:
                counts[position[id(p)]] += 1
            else:
                foreign += 1
    return Observation(mask=res.mask, requires_grad=[t.requires_grad for t in live.tensors], norms=norms,
                       changed=[a != b for a, b in zip(before, after)], in_optimizer=counts,
                       foreign_in_optimizer=foreign, losses=losses)


def _hook_warning(n: int) -> str:
    return (f"gradient checkpointing installed {n} input-embedding requires_grad hooks (the vision tower's patch "
            "embedding included): frozen modules before the first trainable one now build an autograd graph "
            "and keep activations")


@dataclass
class _Trace:
    """What the steps saw, for the checks."""

    before: list[tuple[int, int]] = field(default_factory=list)  # fingerprints before step 1
    norms: list[list[float | None]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    backward_ran: bool = False


def _setup(live: _Live, source: Source, plan: Plan, index: ModelIndex, workload: Workload, report: StepReport,
           seed: int, weights: bool, lr: float, prepare: Callable[..., None] | None) -> None:
    """Own model, configured, plan applied, optimizer over exactly the trainable parameters."""
    live.model, report.weights = _model(source, workload, live.device, seed, weights)
    _configure(live.model, workload)
    apply(plan, live.model, index)
    named = dict(live.model.named_parameters())
    live.tensors = [named[p.name] for p in index.params]
    live.optimizer = make_optimizer(workload.optimizer, [t for t in live.tensors if t.requires_grad], lr)
    if prepare is not None:
        prepare(live.model, live.optimizer)
    report.input_grad_hooks = _input_grad_hooks(live.model)
    if report.input_grad_hooks:
        report.warnings.append(_hook_warning(report.input_grad_hooks))


def _steps(live: _Live, report: StepReport, trace: _Trace, workload: Workload, steps: int,
           est: MemoryEstimate | None, cancel: Any) -> Iterator[Event]:
    device, total = live.device, steps + 4
    estimate_bytes = None if est is None else est.peak_bytes
    for n in range(1, steps + 1):
        if _is_cancelled(cancel):
            report.status, report.error = "cancelled", f"cancelled before step {n} of {steps}"
            return
        yield Event("stage", f"step {n} of {steps}", (1 + n) / total)
        _sync_reset(device)
        t0 = time.perf_counter()
        result = _guarded_step(live, workload, device)
        if isinstance(result, str):  # out of memory, handled outside the except block (its traceback pins memory)
            record = StepRecord(n, None, time.perf_counter() - t0, *_peaks(device), estimate_bytes,
                                f"out of memory in step {n}: {result}")
            live.close()
            report.status, report.error = "out_of_memory", _oom_message(n, est, device)
            report.steps.append(record)
            yield Event("step", record.error or "", (2 + n) / total, record=record)
            return
        loss, backward, norms = result
        record = StepRecord(n, loss, time.perf_counter() - t0, *_peaks(device), estimate_bytes)
        report.steps.append(record)
        trace.norms.append(norms)
        trace.losses.append(loss)
        trace.backward_ran = trace.backward_ran or backward
        yield Event("step", f"step {n}: loss {loss:.4f}", (2 + n) / total, record=record)


def _judge(live: _Live, report: StepReport, trace: _Trace, index: ModelIndex, res: Resolution,
           workload: Workload, lr: float) -> None:
    obs = _observe(live, res, trace.before, trace.norms, trace.losses)
    ctx = Context(images=live.batch.images if live.batch else 0, dead=index.dead,
                  input_grad_hooks=_input_grad_hooks(live.model) > 0, reentrant_checkpointing=_reentrant(live.model),
                  loss_required_grad=trace.backward_ran, dtype=workload.dtype, lr=lr)
    report.checks = run_checks(index, obs, ctx)
    report.grad_norms = {"step": len(trace.norms), **grad_norms(index, res.mask, trace.norms[-1])}


def iter_step(source: Source, plan: Plan, workload: Workload, *, steps: int = 2, lr: float = 1e-5,
              device: str = "cpu", seed: int = 0, weights: bool = False, item: Example | None = None,
              cancel: Any = None,
              prepare: Callable[[torch.nn.Module, torch.optim.Optimizer | None], None] | None = None,
              ) -> Iterator[Event]:
    """Run `steps` training steps of `source` under `plan` and yield progress; the last event holds the report.

    `item`: a real example instead of the synthetic batch (needs the checkpoint's processor).
    `cancel`: a threading.Event or a callable; checked between steps.
    `prepare(model, optimizer)`: called once before the weights are fingerprinted and the first step
    runs (instrumentation, fault injection in tests).
    Raises a FreezelabError, with nothing allocated, when the run cannot start."""
    _check_args(source, workload, steps, lr, device, weights)
    started = time.perf_counter()
    index = index_of(source, dtype=workload.dtype)
    res = resolve(plan, index)
    live, trace = _Live(device), _Trace()
    with _cpu_threads(index, device), contextlib.closing(live):  # closing: however the run ends
        yield Event("stage", "estimating memory and building the batch", 0.5 / (steps + 4))
        est = _batch_within_budget(live, source, index, res, workload, seed, item)
        report = _report(index, res, workload if item is None else live.batch.workload(workload), live.batch,
                         device, lr, seed, est)
        yield Event("stage", f"building {index.name} on {device}", 1 / (steps + 4))
        _setup(live, source, plan, index, workload, report, seed, weights, lr, prepare)
        trace.before = fingerprints(live.tensors)
        yield from _steps(live, report, trace, workload, steps, est, cancel)
        if report.status == "ok":
            yield Event("stage", "checking every parameter", (steps + 3) / (steps + 4))
            _judge(live, report, trace, index, res, workload, lr)
    report.seconds = time.perf_counter() - started
    yield Event("done", "passed" if report.passed else report.error or "a check failed", 1.0, report=report)


def _batch_within_budget(live: _Live, source: Source, index: ModelIndex, res: Resolution, workload: Workload,
                         seed: int, item: Example | None) -> MemoryEstimate | None:
    """The memory gate and the batch, in the order that allocates nothing before the gate."""
    if item is None:  # estimate first: a huge synthetic batch is itself an allocation
        est = _gate(index, res.mask, workload, live.device)
        live.batch = _batch(source, index, workload, live.device, seed, None)
        return est
    live.batch = _batch(source, index, workload, live.device, seed, item)  # its real length decides
    return _gate(index, res.mask, live.batch.workload(workload), live.device)


def _oom_message(step: int, est: MemoryEstimate | None, device: str) -> str:
    import torch

    total = torch.cuda.get_device_properties(device).total_memory if device.startswith("cuda") else None
    said = f"the estimate was {gib(est.peak_bytes)} at the peak" if est is not None else "no estimate was available"
    card = f" on a {gib(total)} device" if total else ""
    return f"out of memory in step {step}{card}; {said}. Memory was released."


def run_step(source: Source, plan: Plan, workload: Workload, *, progress: Callable[[Event], None] | None = None,
             **options: Any) -> StepReport:
    """`iter_step` to the end; `progress` sees every event. Options as for iter_step."""
    report = None
    for event in iter_step(source, plan, workload, **options):
        if progress is not None:
            progress(event)
        report = event.report or report
    assert report is not None  # iter_step always ends with a "done" event or raises
    return report
