"""A sanity step from start to end: `iter_step` streams Events (a Gradio generator can relay them),
`run_step` consumes them and returns the StepReport."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from freezelab.adapter_checks import MERGE_TOLERANCE, QUANTIZED_MERGE_TOLERANCE, Merge
from freezelab.batch import Batch, Example
from freezelab.cancellation import CancelFlag
from freezelab.checks import Context, Observation, grad_norms, run_checks
from freezelab.compute.flops import flops_followed, step_flops
from freezelab.compute.timing import beside_measured
from freezelab.index import ModelIndex
from freezelab.models import index_of
from freezelab.peft_build import merged_output_check, require_peft
from freezelab.plans import Plan, Resolution, resolve
from freezelab.quantize import check_quantization
from freezelab.sources import Source
from freezelab.step.gate import StepError, check_args, gate
from freezelab.step.live import Live, input_grad_hooks, make_batch, reentrant, setup
from freezelab.step.report import Event, EventKind, Status, StepReport, Weights
from freezelab.step.train import Trace, run_steps
from freezelab.workload import Workload

if TYPE_CHECKING:
    import torch

    from freezelab.memory.result import MemoryEstimate

# Below this size a CPU step is dominated by thread-pool overhead, and on a busy machine
# several intra-op threads make it 5-10x slower (measured: tiny, 2 cores under load).
SINGLE_THREAD_PARAMS = 50_000_000


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


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(device)


def _report(base: ModelIndex, res: Resolution, workload: Workload, batch: Batch, device: str, lr: float,
            seed: int, est: MemoryEstimate | None) -> StepReport:
    index, mask = res.adapted(base)  # base plus adapters, as PEFT counts them
    trainable = [i for i, on in enumerate(mask) if on]
    return StepReport(
        model=index.name, model_class=index.model_class, device=device, device_name=_device_name(device),
        weights=Weights.RANDOM, workload=workload.to_dict(), batch=batch.describe(), plan=res.plan.to_dict(),
        trainable_params=sum(index.numels[i] for i in trainable), trainable_tensors=len(trainable),
        total_params=index.total_params, lr=lr, seed=seed, warnings=list(res.warnings),
        adapter_params=res.adapters.params,
        estimate={} if est is None else {"method": est.method, "peak_bytes": est.peak_bytes,
                                         "device_estimate_bytes": est.device_estimate_bytes, "phase": est.phase},
        time_estimate=_time_estimate(base, res, workload, device))


def _time_estimate(index: ModelIndex, res: Resolution, workload: Workload, device: str) -> dict[str, Any]:
    """The time model's step time on this device, or why there is none (a model whose FLOPs are not modelled)."""
    why = flops_followed(index, workload)
    if why is not None:
        return {"gpu": None, "seconds": None, "note": why, "assumptions": []}
    return beside_measured(step_flops(index, res.mask, workload, adapters=res.adapters), workload,
                           _device_name(device))


def _batch_within_budget(live: Live, source: Source, index: ModelIndex, res: Resolution, workload: Workload,
                         seed: int, item: Example | None) -> MemoryEstimate | None:
    """The memory gate and the batch, in the order that allocates nothing before the gate."""
    if item is None:  # estimate first: a huge synthetic batch is itself an allocation
        est = gate(index, res.mask, workload, live.device, res.adapters)
        live.batch = make_batch(source, index, workload, live.device, seed + live.rank, None)
        return est
    live.batch = make_batch(source, index, workload, live.device, seed + live.rank, item)  # its real length decides
    return gate(index, res.mask, live.batch.workload(workload), live.device, res.adapters)


def _observe(live: Live, res: Resolution, trace: Trace) -> Observation:
    mask = res.mask + [True] * (len(live.tensors) - len(res.mask))  # adapter tensors all train
    after = live.fingerprints()
    position = {id(t): i for i, t in enumerate(live.tensors)}
    counts, foreign = [0] * len(live.tensors), 0
    for group in live.optimizer.param_groups if live.optimizer is not None else []:
        for p in group["params"]:
            if id(p) in position:
                counts[position[id(p)]] += 1
            else:
                foreign += 1
    return Observation(mask=mask, requires_grad=[t.requires_grad for t in live.tensors], norms=trace.norms,
                       changed=[a != b for a, b in zip(trace.before, after)], in_optimizer=counts,
                       foreign_in_optimizer=foreign, losses=trace.losses)


def _merge(live: Live, res: Resolution, workload: Workload) -> Merge | None:
    """Merge the adapters into the base (after the weights were compared) and compare the outputs."""
    if live.peft is None or live.batch is None:
        return None
    diff, scale = merged_output_check(live.peft, live.batch.inputs)
    quantized = res.adapters.quant.on
    return Merge(diff, scale, QUANTIZED_MERGE_TOLERANCE if quantized else MERGE_TOLERANCE[workload.dtype], quantized)


def _judge(live: Live, report: StepReport, trace: Trace, res: Resolution, workload: Workload, lr: float) -> None:
    index = live.index
    assert index is not None
    obs = _observe(live, res, trace)
    obs.merge = _merge(live, res, workload)
    ctx = Context(images=live.batch.images if live.batch else 0, dead=index.dead,
                  input_grad_hooks=input_grad_hooks(live.model) > 0, reentrant_checkpointing=reentrant(live.model),
                  loss_required_grad=trace.backward_ran, dtype=workload.dtype, lr=lr)
    report.checks = run_checks(index, obs, ctx)
    report.grad_norms = {"step": len(trace.norms), **grad_norms(index, obs.mask, trace.norms[-1])}


def _check_adapters(res: Resolution, device: str, sharded: bool) -> None:
    """Before anything is built: a quantized base needs CUDA and bitsandbytes, adapters need PEFT, and a
    sharded run steps plans without adapters only."""
    if not res.adapters and not res.adapters.quant.on:
        return
    if sharded:
        raise StepError("a sanity step with adapters or a quantized base runs on one device; a sharded run "
                        "(FSDP2 / DDP) steps plans without them")
    check_quantization(res.adapters, device)
    if res.adapters:
        require_peft()


def iter_step(source: Source, plan: Plan, workload: Workload, *, steps: int = 2, lr: float = 1e-5,
              device: str = "cpu", seed: int = 0, weights: bool = False, item: Example | None = None,
              cancel: CancelFlag = None,
              prepare: Callable[[torch.nn.Module, torch.optim.Optimizer | None], None] | None = None,
              live: Live | None = None) -> Iterator[Event]:
    """Run `steps` training steps of `source` under `plan` and yield progress; the last event holds the report.

    `item`: a real example instead of the synthetic batch (needs the checkpoint's processor).
    `cancel`: a threading.Event or a callable; checked between steps and inside each (its forward,
    backward and optimizer step): a cancelled run reports status "cancelled" with everything released.
    `prepare(model, optimizer)`: called once before the weights are fingerprinted and the first step
    runs (instrumentation, fault injection in tests).
    `live`: what the run allocates; a sharded run passes its own (freezelab.step.shard), on its device.
    Raises a FreezelabError, with nothing allocated, when the run cannot start."""
    check_args(source, workload, steps, lr, device, weights, sharded=live is not None)
    started = time.perf_counter()
    index = index_of(source, dtype=workload.dtype)
    res = resolve(plan, index)
    _check_adapters(res, device, sharded=live is not None)
    live, trace = live or Live(device), Trace()
    with _cpu_threads(index, device), contextlib.closing(live):  # closing: however the run ends
        yield Event(EventKind.STAGE, "estimating memory and building the batch", 0.5 / (steps + 4))
        est = _batch_within_budget(live, source, index, res, workload, seed, item)
        report = _report(index, res, workload if item is None else live.batch.workload(workload), live.batch,
                         device, lr, seed, est)
        yield Event(EventKind.STAGE, f"building {index.name} on {device}", 1 / (steps + 4))
        setup(live, source, res, index, workload, report, seed, weights, lr, prepare)
        trace.before = live.fingerprints()
        yield from run_steps(live, report, trace, workload, steps, est, cancel)
        if report.status == Status.OK:
            yield Event(EventKind.STAGE, "checking every parameter", (steps + 3) / (steps + 4))
            _judge(live, report, trace, res, workload, lr)
    report.seconds = time.perf_counter() - started
    yield Event(EventKind.DONE, "passed" if report.passed else report.error or "a check failed", 1.0, report=report)


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
