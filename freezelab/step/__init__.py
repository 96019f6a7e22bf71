"""The sanity step: a few real training steps under a plan, then a check of every parameter
(see freezelab.checks).

The protocol is the one of the reference GPU measurements, so measured peaks compare with the
memory estimator's: model built in the parameter dtype directly on the device, plan applied,
optimizer created before step 1; per step forward with labels, backward, optimizer.step(),
zero_grad(set_to_none=True); peak memory reset before each step, step >= 2 is the steady state
(optimizer state exists).

Each run builds its own model, so a model cached elsewhere is never mutated, and releases
everything it allocated when it ends, however it ends (finished, cancelled, out of memory,
abandoned generator).

  report   StepRecord, StepReport, Event and their choices (Status, Weights, EventKind)
  gate     option checks and the memory gate, before anything is allocated
  live     what a run allocates (model, optimizer, batch), built and released in one place
  train    the training steps
  run      iter_step / run_step: the whole run
"""

from freezelab.step.gate import MAX_LR, MAX_STEPS, StepError, WontFitError
from freezelab.step.report import Event, EventKind, Status, StepRecord, StepReport, Weights
from freezelab.step.run import iter_step, run_step

__all__ = ["MAX_LR", "MAX_STEPS", "Event", "EventKind", "Status", "StepError", "StepRecord", "StepReport",
           "Weights", "WontFitError", "iter_step", "run_step"]
