"""A sanity step spread over the ranks of a process group: FSDP2 or DDP, with the checks on the full
parameters.

FSDP2 (`torch.distributed.fsdp.fully_shard`): the model is built on the meta device, the plan applied,
every decoder layer and every vision encoder layer sharded as its own unit, then the root (embeddings,
projector, norms, lm_head); only then is storage allocated (`to_empty`), each rank holding its dim-0
shard of every parameter, filled with random weights (`initialize_weights`, which also restores the
non-persistent buffers) or read from the checkpoint's safetensors slices (freezelab.step.slices). A
parameter's frozen and trainable neighbours may share a unit: FSDP2 shards each parameter by itself and
gives gradients only to those that require them. `--offload-optimizer` is FSDP2's CPUOffloadPolicy:
parameter and gradient shards live in host memory and the optimizer steps there.

DDP (`DistributedDataParallel`): every rank builds the whole model; DDP broadcasts rank 0's weights and
averages the gradients of the trainable parameters. `find_unused_parameters=True`, so a trainable tensor
that gets no gradient is named by the checks instead of stopping DDP.

The checks read full parameters: a sharded weight is gathered one tensor at a time
(`DTensor.full_tensor()`) to be fingerprinted, and a sharded gradient's norm is the square root of the
sum over ranks of its shards' squared norms (one all-reduce for all of them).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from freezelab.components import classify
from freezelab.fingerprint import fingerprints
from freezelab.models import build, torch_dtype
from freezelab.sources import Source
from freezelab.step.live import Live, local_grad_norms
from freezelab.step.report import Weights
from freezelab.step.world import World
from freezelab.workload import Sharding, Workload

if TYPE_CHECKING:
    import torch


class ShardedLive(Live):
    """What one rank of a sharded run allocates, and how it reads full parameters."""

    def __init__(self, world: World, sharding: Sharding, offload: bool) -> None:
        super().__init__(world.device)
        self.world = world
        self.rank = world.rank
        self.sharding = sharding
        self.offload = offload
        self.digest = ""                   # of the last full-parameter fingerprints (ranks compare it)

    def build_model(self, source: Source, workload: Workload, seed: int,
                    weights: bool) -> tuple[torch.nn.Module, Weights]:
        if self.sharding == Sharding.DDP:
            return super().build_model(source, workload, seed, weights)
        loaded = weights and source.kind == "checkpoint"
        return build(source, device="meta", dtype=workload.dtype), Weights.CHECKPOINT if loaded else Weights.RANDOM

    def wrap(self, source: Source, workload: Workload, seed: int, weights: bool) -> None:
        if self.sharding == Sharding.DDP:
            self.engine = wrap_ddp(self.model, self.world)
            return
        from freezelab.step.slices import load_shards, plan_reading

        reading = plan_reading(self.model, source) if weights and source.kind == "checkpoint" else None
        shard_fsdp(self.model, self.world, self.offload)
        materialize(self.model, self.world, seed)
        if reading is not None:
            load_shards(self.model, source, reading, torch_dtype(workload.dtype))

    def fingerprints(self) -> list[tuple[int, int]]:
        out = [full_fingerprint(t, self.world) for t in self.tensors]
        self.digest = hashlib.sha256(repr(out).encode()).hexdigest()[:16]
        return out

    def grad_norms(self) -> list[float | None]:
        if self.sharding == Sharding.DDP:
            return local_grad_norms(self.tensors)
        return sharded_grad_norms(self.tensors, self.world)


# -- wrapping ---------------------------------------------------------------------------

def unit_paths(model: torch.nn.Module) -> list[str]:
    """The FSDP2 units below the root: every vision encoder layer and every decoder layer, in order."""
    found = classify(model)
    return [path for paths in found.layers.values() for path in paths]


def _mesh(world: World) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu" if world.device == "cpu" else "cuda", (world.size,))


def shard_fsdp(model: torch.nn.Module, world: World, offload: bool) -> None:
    """fully_shard on every layer, then on the root (bottom-up, as FSDP2 requires)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = _mesh(world)
    policy = CPUOffloadPolicy(pin_memory=world.device != "cpu") if offload else OffloadPolicy()
    for path in unit_paths(model):
        fully_shard(model.get_submodule(path), mesh=mesh, offload_policy=policy)
    fully_shard(model, mesh=mesh, offload_policy=policy)


def materialize(model: torch.nn.Module, world: World, seed: int) -> None:
    """Storage for each rank's shards (on the CPU under offload), random weights and the buffers."""
    import torch

    model.to_empty(device="cpu" if world.device == "cpu" else world.device)
    torch.manual_seed(seed)
    model.initialize_weights()  # random weights and the non-persistent buffers (rotary, position ids)
    model.tie_weights()


def wrap_ddp(model: torch.nn.Module, world: World) -> Any:
    from torch.nn.parallel import DistributedDataParallel

    ids = None if world.device == "cpu" else [world.local_rank]
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


# -- reading full parameters ------------------------------------------------------------

def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _on_device(t: Any, world: World) -> Any:
    """A sharded tensor whose shard lives on the CPU (offload) moved to the rank's device for a collective."""
    from torch.distributed.tensor import DTensor

    local = t.to_local()
    if str(local.device) == world.device or world.device == "cpu":
        return t
    return DTensor.from_local(local.to(world.device), t.device_mesh, t.placements, shape=t.shape, stride=t.stride())


def full_fingerprint(t: torch.Tensor, world: World) -> tuple[int, int]:
    """The fingerprint of the full tensor: a shard is gathered (a collective), fingerprinted, dropped."""
    import torch

    with torch.no_grad():
        full = _on_device(t.detach(), world).full_tensor() if _is_dtensor(t) else t
        return fingerprints([full])[0]


def sharded_grad_norms(tensors: list[torch.Tensor], world: World) -> list[float | None]:
    """Full-gradient L2 norms from the shards: sum over ranks of squared shard norms, one all-reduce. A
    gradient counts as present when every rank holds its shard."""
    import torch
    import torch.distributed as dist

    device = "cpu" if world.device == "cpu" else world.device
    squares = torch.zeros(len(tensors), dtype=torch.float64, device=device)
    present = torch.zeros(len(tensors), dtype=torch.float64, device=device)
    for i, t in enumerate(tensors):
        if t.grad is None:
            continue
        local = t.grad.to_local() if _is_dtensor(t.grad) else t.grad
        squares[i] = torch.linalg.vector_norm(local.to(device), dtype=torch.float64) ** 2
        present[i] = 1
    both = torch.stack([squares, present])
    dist.all_reduce(both)
    values, counts = both.cpu().tolist()
    return [v ** 0.5 if c == world.size else None for v, c in zip(values, counts)]
