"""The two training steps of the calibration protocol, phase by phase, on fake tensors:
forward with labels, backward, `optimizer.step()`, `zero_grad(set_to_none=True)`.

Tensors die where they die in the protocol's loop: the model output after
backward (`del out`), the loss after the optimizer step; the ledger's clock
marks each phase, and step 2 (optimizer state exists) is the steady state. Step 2's
forward and backward are also counted by FlopCounterMode (`simulate.flops`): the result is
`details["flops"]`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from freezelab.memory.fake.ledger import Label
from freezelab.memory.result import Category, Phase
from freezelab.memory.simulate import hooks
from freezelab.memory.simulate.flops import StepFlops, counted
from freezelab.memory.simulate.optim import book_state
from freezelab.memory.simulate.run import Run

NO_GRAPH_NOTE = (
    "No trainable parameter is on the loss's autograd graph (e.g. projector-only training on a "
    "text-only batch without gradient checkpointing): the real backward raises 'element 0 of "
    "tensors does not require grad'. The estimate covers the forward only.")


@dataclass
class StepMarks:
    """Where each step starts on the ledger's clock."""

    start_t: dict[int, int] = field(default_factory=dict)       # step -> first tick
    start_total: dict[int, int] = field(default_factory=dict)   # step -> bytes alive at its start
    step1_peak: int = 0                                         # booked peak of step 1 (512-rounded)


def run_steps(run: Run, batch: dict[str, Any], params: list[torch.nn.Parameter],
              opt: torch.optim.Optimizer | None) -> StepMarks:
    """Two full training steps; returns the clock marks of each."""
    ledger = run.ledger
    autocast = (torch.autocast("cpu", dtype=run.autocast_dtype) if run.autocast_dtype is not None
                else contextlib.nullcontext())
    marks = StepMarks()
    flops = StepFlops(ledger) if run.count_flops else None
    for step in (1, 2):
        base = 0.15 + (step - 1) * 0.4
        if step == 2:
            ledger.reset_peak()
        marks.start_t[step], marks.start_total[step] = ledger.t, ledger.total
        with counted(flops if step == 2 else None, Phase.FORWARD):
            out = forward(run, step, base, batch, autocast)
        loss = out.loss
        with counted(flops if step == 2 else None, Phase.BACKWARD):
            backward(run, step, base, loss, params)
        del out
        if step == 1:
            run.details["trainable_without_grad"] = [
                n for n, p in run.model.named_parameters() if p.requires_grad and p.grad is None]
        run.lap(f"step{step}_backward")
        optimizer_step(run, step, base, opt)
        del loss
        ledger.set_phase(Phase.IDLE)
        if step == 1:
            marks.step1_peak = ledger.peak
        run.lap(f"step{step}_optimizer")
    if flops is not None:
        run.details["flops"] = flops.summary()
    return marks


def forward(run: Run, step: int, base: float, batch: dict[str, Any], autocast: Any) -> Any:
    """The model's forward with labels (it computes the loss); returns its output."""
    ledger = run.ledger
    run.phase(base, f"step {step}: forward")
    ledger.set_phase(Phase.FORWARD)
    ledger.category, ledger.component = Category.ACTIVATIONS, Label.OTHER
    with autocast:
        out = run.model(**batch)
    hooks.label_outputs(ledger, out)
    run.lap(f"step{step}_forward")
    return out


def backward(run: Run, step: int, base: float, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
    ledger = run.ledger
    run.phase(base + 0.2, f"step {step}: backward")
    ledger.set_phase(Phase.BACKWARD)
    ledger.category, ledger.component = Category.LOGITS_LOSS, Label.LM_HEAD
    if params and loss.requires_grad:
        loss.backward()
    elif params:
        run.note_once(NO_GRAPH_NOTE)


def optimizer_step(run: Run, step: int, base: float, opt: torch.optim.Optimizer | None) -> None:
    """`optimizer.step()` (reading norms answers 1), `zero_grad(set_to_none=True)`, then the
    state is labelled."""
    ledger = run.ledger
    run.phase(base + 0.35, f"step {step}: optimizer")
    ledger.set_phase(Phase.OPTIMIZER)
    ledger.category, ledger.component = Category.OPTIMIZER_TEMP, Label.OPTIMIZER
    if opt is None:
        return
    ledger.fake_items = True
    try:
        opt.step()
    finally:
        ledger.fake_items = False
    opt.zero_grad(set_to_none=True)
    book_state(ledger, opt)
