"""Simulated memory estimate: run the real Hugging Face training step on fake tensors.

`simulate_step` builds the model from its config on the meta device, moves it
to fake tensors (no weights, no GPU), applies the freeze plan, and runs the
calibration protocol (`shared/calibration/measure.py`): two full steps of
forward (loss computed by the model from `labels`), backward,
`optimizer.step()`, `zero_grad(set_to_none=True)`; the reported peak is the
one of step 2 (optimizer state exists: the steady state).

Every tensor storage the step creates is booked by `fake.ledger.TensorLedger`
(rounded up to the allocator's 512-byte blocks, freed with its last
reference), with a category (`result.Category`) and, for activations, the
component that produced it. CUDA behaviour that differs from what the same
code does on CPU is emulated (`freezelab.memory.fake`): SDPA backend choice,
the foreach/fused optimizer defaults, autocast's CUDA op lists, cuBLAS
workspaces and flash-attention backward scratch.

The run, phase by phase: `model` (build, materialise, plan), `batch`,
`hooks` (who made each allocation), `phases` (forward, backward, optimizer of
two steps), `accounting` (allocator replay, peak, breakdown, device figure)
with `sharding` (ZeRO / FSDP / DDP and offload, applied on the log) and
`notes`.

Accuracy (benchmarks/simulate_accuracy.py): within 0.14% of
`peak_allocated_bytes` on the 11 H100 calibration rows, and within 0.4% on 23
further H200 rows (checkpointing, eager attention, SGD / Adafactor / fused
AdamW, text-only and two-image batches, fp32 + autocast, OneVision, NeXT).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Collection
from typing import Any

from freezelab.adapters import Adapters
from freezelab.cancellation import watch_modules
from freezelab.errors import SimulationCancelled, SimulationError
from freezelab.index import ModelIndex
from freezelab.memory.fake.autocast import CudaAutocastDelta
from freezelab.memory.fake.ledger import Label
from freezelab.memory.fake.patches import cuda_emulation_installed
from freezelab.memory.result import Category, MemoryEstimate
from freezelab.memory.simulate import accounting, batch, fsdp, hooks, model, phases
from freezelab.memory.simulate.optim import optimizer_for
from freezelab.memory.simulate.run import Progress, Run
from freezelab.workload import Workload

__all__ = ["SimulationCancelled", "SimulationError", "simulate_step"]  # what callers need, errors included


def simulate_step(
    config: Any,
    trainable: Collection[str],
    workload: Workload,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    input_require_grads: bool = False,
    adapters: Adapters | None = None,
    index: ModelIndex | None = None,
    processor: dict[str, Any] | None = None,
    count_flops: bool = True,
) -> MemoryEstimate:
    """Run two training steps of the real model on fake tensors and account their memory.

    `config` is the `transformers.PretrainedConfig` of a vision-language model transformers
    builds (freezelab.families); it is not modified. `processor`: the image processor's
    settings (ModelIndex.processor), which decide how many tokens an image becomes.
    `trainable` holds parameter names as `model.named_parameters()` spells them
    (transformers 5.x); every other parameter is frozen. Returns the step-2 peak
    (what `torch.cuda.max_memory_allocated()` reports over the steady-state step)
    with its breakdown by category at the moment of the peak.

    `progress(fraction, message)` is called at each phase; `cancel()` is polled
    at each phase and inside the forward and the backward, before each module and as each
    module's gradient arrives (a phase of a huge batch can run for minutes), and when it
    returns True, `SimulationCancelled` is raised.
    Bad input, and a step the real model could not run either, raise `SimulationError`.

    `input_require_grads=True` installs transformers' input-embedding requires_grad
    hooks (`model.enable_input_require_grads()`) even without gradient checkpointing:
    the state a model is left in when checkpointing was turned off without removing
    them (see shared/notes/pitfalls.md). With `workload.grad_ckpt` they are always on,
    as `gradient_checkpointing_enable()` installs them.

    `adapters` (with the `index` they were resolved on): the plan's LoRA / DoRA adapters, added by PEFT's
    own `get_peft_model` to the fake model (real PEFT modules on fake tensors), and its quantized base,
    whose 4- / 8-bit layers are modelled (freezelab.memory.simulate.quantized: bitsandbytes cannot run on
    fake tensors).

    `count_flops=True` counts step 2 with FlopCounterMode (`details["flops"]`, see
    `simulate.flops`); the counting adds to the run's CPU time
    (`python benchmarks/flops_agreement.py --overhead`).
    """
    if adapters is not None and adapters.layers and index is None:
        raise SimulationError("adapters need the model index they were resolved on")
    return execute(Run(config, trainable, workload, progress, cancel, input_require_grads=input_require_grads,
                       adapters=adapters, index=index, processor=processor, count_flops=count_flops))


def execute(run: Run) -> MemoryEstimate:
    run.phase(0.0, "building the model on the meta device")
    model.build(run)
    run.lap("build")
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if run.sharded:
            _shard_on_meta(run, stack)
        _enter_fake_world(run, stack)
        _count_image_tokens(run)
        stack.enter_context(run.ledger)
        labels = hooks.param_labels(run)
        if run.sharded:
            _instrument_fsdp(run, stack, labels)
        _book_weights(run, labels)
        run.ledger.category, run.ledger.component = Category.ACTIVATIONS, Label.INPUTS
        inputs = batch.make_batch(run)
        params = [p for p in run.model.parameters() if p.requires_grad]
        opt = optimizer_for(run.w.optimizer, params)
        handles = hooks.install(run, params, labels)
        stack.callback(lambda: [h.remove() for h in handles])
        if run.cancellable:
            stack.enter_context(watch_modules(run.model, run.check))
        try:
            marks = phases.run_steps(run, inputs, params, opt)
        except (ValueError, TypeError, IndexError, RuntimeError) as err:  # the model refused the batch
            if isinstance(err, SimulationError):
                raise
            first = (str(err).splitlines() or [type(err).__name__])[0][:300]
            raise SimulationError(f"the training step cannot run as configured: {first}") from err
        run.ledger.category = Category.ACTIVATIONS
        del inputs
    run.phase(0.95, "accounting")
    est = accounting.estimate(run, marks, params, labels)
    run.lap("accounting")
    est.details["seconds"] = dict(run.timings, total=round(time.perf_counter() - run.t0, 3))
    run.phase(1.0, "done")
    return est


def _shard_on_meta(run: Run, stack: contextlib.ExitStack) -> None:
    """The plan on the meta model, the fake process group of N ranks, FSDP2 on every layer and the root."""
    run.phase(0.03, f"sharding the model over {run.w.gpus} fake ranks (FSDP2)")
    model.apply_plan(run)
    mesh = stack.enter_context(fsdp.fake_group(run.w.gpus))
    fsdp.shard(run.model, run.parts, mesh, run.w.sharding)
    run.lap("shard")


def _instrument_fsdp(run: Run, stack: contextlib.ExitStack, labels: dict[str, Label]) -> None:
    """FSDP2's lazy init under the ledger (its padded shards are the weights), its storage resizes and
    its gathering and reducing booked."""
    stack.enter_context(fsdp.resizes_booked(run.ledger))
    run.ledger.category, run.ledger.component = Category.WEIGHTS, Label.OTHER
    fsdp.lazy_init(run.model)
    names = {id(t): n for n, t in run.model.named_parameters()}
    for g in fsdp.param_groups(run.model):
        for p in g.fsdp_params:
            run.ledger.track(p._sharded_param_data, Category.WEIGHTS,
                             labels.get(names.get(id(p.sharded_param), ""), Label.OTHER))
    fsdp.charge(run.ledger, run.model, labels, offload=run.w.offload_optimizer and run.w.sharding == "fsdp")


def _enter_fake_world(run: Run, stack: contextlib.ExitStack) -> None:
    """Fake tensors, the plan, and CUDA's SDPA / autocast behaviour, until the stack closes."""
    stack.enter_context(run.fake_mode)
    run.phase(0.05, "moving the model to fake tensors")
    if run.sharded:
        model.materialize_sharded(run)
    else:
        model.materialize(run)
        model.apply_plan(run)
    stack.enter_context(cuda_emulation_installed(run.ledger))
    if run.autocast_dtype is not None:
        stack.enter_context(CudaAutocastDelta())
    run.lap("materialize")


def _count_image_tokens(run: Run) -> None:
    """Image tokens of a sample (freezelab.tokens); the model's forward checks them."""
    if not run.w.images and not run.w.frames:
        return
    run.phase(0.1, "counting image tokens")
    batch.layouts(run)
    run.lap("image_tokens")


def _book_weights(run: Run, labels: dict[str, Label]) -> None:
    """Every parameter and buffer, in construction order (as built on the GPU)."""
    for name, p in run.model.named_parameters():
        run.ledger.track(p, Category.WEIGHTS, labels.get(name, Label.OTHER))
    for b in run.model.buffers():
        run.ledger.track(b, Category.WEIGHTS, Label.BUFFERS)
