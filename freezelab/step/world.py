"""The process group of a sharded sanity step: joined from torchrun's environment (or a group of one),
with bounded timeouts, and left however the run ends.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process it starts;
without them the step runs as a group of one (world size 1: the engine's own overhead). nccl on CUDA,
gloo on the CPU. Every wait is bounded by `timeout_s`: joining (the rendezvous) and every collective,
so a rank that dies or hangs makes the others fail after that long instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from freezelab.step.gate import StepError

DEFAULT_TIMEOUT_S = 300.0    # a 72B checkpoint read per rank can keep the faster ranks waiting for minutes
MAX_TIMEOUT_S = 86_400.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(StepError):
    """The launch is malformed: the launcher's variables, the timeout, the device (bad input)."""


class RankFailed(StepError):
    """This rank could not finish: the rendezvous or a collective timed out, it ran out of memory, or it
    raised; the message names the rank (exit status 1, not bad input)."""


@dataclass(frozen=True)
class World:
    """This process's place in the group."""

    rank: int
    size: int
    local_rank: int
    device: str                  # cpu, or cuda:LOCAL_RANK
    backend: str                 # gloo or nccl
    timeout_s: float
    launched: bool               # started by torchrun (False: a group of one made here)

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.size}"


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE"))


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"{name}={raw!r} is not a whole number (set by the launcher)") from None


def _device(device: str, local_rank: int, size: int) -> str:
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda:") and size > 1:
        raise DistributedError(f"--device {device}: under torchrun each rank uses the GPU of its local rank; "
                               "give --device cuda")
    return f"cuda:{local_rank}" if device == "cuda" else device


def plan_world(device: str, timeout_s: float) -> World:
    """Where this process stands, from the launcher's variables; nothing is joined yet."""
    if not isinstance(timeout_s, (int, float)) or not 1 <= timeout_s <= MAX_TIMEOUT_S:
        raise DistributedError(f"the timeout must be between 1 and {MAX_TIMEOUT_S:g} seconds, got {timeout_s!r}")
    launched = launched_by_torchrun()
    rank, size = (_env_int("RANK", 0), _env_int("WORLD_SIZE", 1)) if launched else (0, 1)
    local_rank = _env_int("LOCAL_RANK", rank) if launched else 0
    if size < 1 or not 0 <= rank < size:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process group")
    where = _device(device, local_rank, size)
    return World(rank, size, local_rank, where, "gloo" if where == "cpu" else "nccl", float(timeout_s), launched)


def _rendezvous_message(world: World, err: BaseException) -> str:
    first = (str(err).splitlines() or [type(err).__name__])[0][:200]
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return (f"{world.name}: the rendezvous at {where} did not complete within {world.timeout_s:g} s "
            f"(not every rank joined, or the address is unreachable): {first}")


def join(world: World) -> None:
    """Initialise the default process group for `world` (bounded by its timeout)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        raise DistributedError("a process group is already initialised in this process")
    timeout = datetime.timedelta(seconds=world.timeout_s)
    device_id = None
    if world.device.startswith("cuda"):
        torch.cuda.set_device(world.device)
        device_id = torch.device(world.device)
    try:
        if world.launched:
            dist.init_process_group(world.backend, timeout=timeout, device_id=device_id)
        else:
            dist.init_process_group(world.backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout,
                                    device_id=device_id)
    except (dist.DistError, RuntimeError, TimeoutError, ValueError) as err:
        raise RankFailed(_rendezvous_message(world, err)) from None


def leave(together: bool = False) -> None:
    """Destroy the process group; with `together` (this rank's work ended normally) first wait until every
    rank is here: a rank that tears its connections down while another still finishes its last collective
    can make gloo abort that rank (SIGABRT) instead of letting it exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together and dist.get_world_size() > 1:
            try:
                dist.barrier()
            except (dist.DistError, RuntimeError):
                pass  # another rank failed: its own line says why
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(world: World) -> Iterator[World]:
    """The process group for the duration of the block; destroyed however the block ends (after the
    other ranks, when the block ended normally)."""
    join(world)
    together = False
    try:
        yield world
        together = True
    finally:
        leave(together)


def collective_message(world: World, err: BaseException) -> str:
    """One line for a collective that failed: usually another rank died, ran out of memory or hangs."""
    first = (str(err).splitlines() or [type(err).__name__])[0][:200]
    return (f"{world.name}: a collective with the other ranks failed or timed out (limit {world.timeout_s:g} s); "
            f"another rank probably failed first (see its line): {first}")


def is_collective_failure(err: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(err, (dist.DistError, TimeoutError)) or (
        isinstance(err, RuntimeError) and any(word in str(err) for word in ("Gloo", "NCCL", "Connection closed",
                                                                             "timed out", "Timed out")))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def say_when_stopped(world: World) -> None:
    """torchrun ends the surviving ranks with SIGTERM when one fails: say so in one line, then exit."""

    def handler(signum: int, frame: Any) -> None:
        print(f"error: {world.name}: stopped by the launcher (signal {signum}) because another rank failed or "
              "died; that rank's line or exit code says why", file=sys.stderr, flush=True)
        os._exit(1)

    if world.launched and world.size > 1:
        signal.signal(signal.SIGTERM, handler)
