"""A sanity step on every rank of a torchrun launch (or a group of one): join the process group, run the
same steps and checks as on one device through FSDP2 or DDP (freezelab.step.shard), then gather every
rank's summary into rank 0's report (freezelab.step.ranks).

A rank that fails says so in one line that names it (`RankFailed`, or a bad-input error prefixed with
the rank); it never waits for the others. The others then fail their next collective within the
timeout, or are ended by torchrun, which stops the whole group when one rank exits with an error.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

from freezelab.batch import Example
from freezelab.errors import FreezelabError
from freezelab.plans import Plan
from freezelab.sources import Source
from freezelab.step.gate import StepError
from freezelab.step.ranks import exchange, merge, summary
from freezelab.step.report import Event, Status, StepReport
from freezelab.step.run import run_step
from freezelab.step.shard import ShardedLive
from freezelab.step.world import (
    RankFailed,
    World,
    collective_message,
    is_collective_failure,
    joined,
    say_when_stopped,
)
from freezelab.workload import Workload


@contextlib.contextmanager
def _quiet_engine() -> Iterator[None]:
    """FSDP2's advice about in-place ops on a returned view concerns code that modifies the model's
    output; the step only reads the loss. Warnings are otherwise shown as usual."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        # initialize_weights' random ops on a CPU mesh: each shard draws its own values, which is all a
        # random-weight sanity step needs
        warnings.filterwarnings("ignore", message=r"DTensor random operators may not have complete support")
        yield


@contextlib.contextmanager
def rank_errors(world: World) -> Iterator[None]:
    """Every failure of this rank as one error whose message starts with the rank: bad input keeps its
    type (exit status 2), anything else becomes RankFailed (exit status 1)."""
    try:
        yield
    except FreezelabError as err:
        if str(err).startswith(world.name):
            raise
        raise type(err)(f"{world.name}: {err}") from None
    except Exception as err:  # noqa: BLE001 - torch's collective errors have several types
        if is_collective_failure(err):
            raise RankFailed(collective_message(world, err)) from None
        if os.environ.get("FREEZELAB_DEBUG"):
            raise
        first = (str(err).splitlines() or [""])[0][:300]
        raise RankFailed(f"{world.name}: {type(err).__name__}: {first} (FREEZELAB_DEBUG=1 shows the traceback)") \
            from None


def run_sharded_step(source: Source, plan: Plan, workload: Workload, world: World, *, steps: int = 2,
                     lr: float = 1e-5, seed: int = 0, weights: bool = False, item: Example | None = None,
                     progress: Callable[[Event], None] | None = None,
                     prepare: Callable[..., None] | None = None) -> StepReport:
    """Run the step on this rank; every rank returns the merged report (rank 0 prints it).

    `workload.gpus` must equal the world size and `workload.sharding` be fsdp or ddp. `progress` is
    called on rank 0 only. `prepare(model, optimizer)` as for run_step (fault injection in tests)."""
    if workload.gpus != world.size:
        raise StepError(f"{world.name}: the workload says {workload.gpus} GPUs but {world.size} ranks run")
    say_when_stopped(world)
    with rank_errors(world), joined(world), _quiet_engine():
        live = ShardedLive(world, workload.sharding, workload.offload_optimizer)
        report = run_step(source, plan, workload, steps=steps, lr=lr, device=world.device, seed=seed,
                          weights=weights, item=item, progress=progress if world.rank == 0 else None,
                          prepare=prepare, live=live)
        if report.status != Status.OK:
            raise RankFailed(f"{world.name}: {report.error}")
        ranks = exchange(summary(report, world.rank, live.digest))
        merge(report, ranks, world, str(workload.sharding), workload.offload_optimizer)
    return report

