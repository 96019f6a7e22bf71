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

On many ranks (launched by torchrun, `--sharding fsdp|ddp`):

  world    the process group: joined from torchrun's variables with bounded timeouts, left however the run ends
  shard    FSDP2 (each layer a unit, then the root; meta init) or DDP, and the checks' full-parameter reads
  slices   each rank reads only its rows of every weight from the checkpoint's safetensors
  ranks    every rank's summary, gathered into rank 0's report, and the ranks_agree check
  sharded  run_sharded_step: the whole run on one rank, its failure one line that names it
"""

from freezelab.step.gate import MAX_LR, MAX_STEPS, StepError, WontFitError
from freezelab.step.report import Event, EventKind, Status, StepRecord, StepReport, Weights
from freezelab.step.run import iter_step, run_step

__all__ = ["MAX_LR", "MAX_STEPS", "Event", "EventKind", "Status", "StepError", "StepRecord", "StepReport",
           "Weights", "WontFitError", "iter_step", "run_step"]
