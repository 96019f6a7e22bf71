"""DDP, ZeRO-1 and optimizer offload, applied on one simulated rank's log.

ZeRO-2, ZeRO-3 and FSDP run through FSDP2 itself (freezelab.memory.simulate.fsdp); this module covers
what runs as one unsharded rank. What each changes is applied to the ledger's log: categories scaled
(`scale`: ZeRO-1 splits the optimizer state N ways, offload moves it off the GPU), and bytes added per
phase for DDP's gradient buckets (`extra`), before the peak is searched again (`fake.log.scaled_peak`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from freezelab.memory.cuda_facts import rounded
from freezelab.memory.result import Category, Phase
from freezelab.units import GiB
from freezelab.workload import Workload

Extra = Callable[[Phase], dict[Category, float]]


@dataclass
class ShardingPlan:
    scale: dict[Category, float] = field(default_factory=dict)  # factor per category (default 1)
    extra: Extra | None = None                                  # bytes added per phase
    notes: list[str] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        return bool(self.scale) or self.extra is not None


def _nbytes(p: torch.Tensor) -> int:
    return rounded(p.numel() * p.element_size())


def plan(model: torch.nn.Module, w: Workload, ran_sharded: bool = False) -> ShardingPlan:
    """What `w`'s sharding and offload change on one rank of `model`'s step (`ran_sharded`: the step ran
    through FSDP2 already, so only offload is left to apply)."""
    out = ShardingPlan()
    if w.offload_optimizer:
        out.scale[Category.OPTIMIZER_STATE] = 0.0
        out.scale[Category.OPTIMIZER_TEMP] = 0.0
        out.notes.append("Optimizer offload: optimizer state and the step's temporaries are on the CPU.")
    if ran_sharded:
        how = "reshard_after_forward=False" if w.sharding == "zero2" else "fully_shard"
        out.notes.append(f"{w.sharding.upper()} on {w.gpus} GPUs: rank 0 of {w.gpus} simulated through FSDP2 ({how} "
                         "on every layer, then the root) over torch's fake process group.")
        return out
    if w.gpus > 1 and w.sharding == "ddp":
        _ddp(model, w, out)
    elif w.gpus > 1 and w.sharding == "zero1":
        _zero1(w, out)
    return out


def _ddp(model: torch.nn.Module, w: Workload, out: ShardingPlan) -> None:
    grads = sum(_nbytes(p) for p in model.parameters() if p.requires_grad)
    if not grads:
        return
    out.extra = lambda phase, g=grads: {Category.GRADIENTS: g}
    out.notes.append(
        f"DDP on {w.gpus} GPUs: nothing is sharded; DDP's gradient buckets "
        f"(gradient_as_bucket_view=False, the default) hold another copy of the "
        f"trainable gradients ({grads / GiB:.2f} GiB, under gradients).")


def _zero1(w: Workload, out: ShardingPlan) -> None:
    if not w.offload_optimizer:
        out.scale[Category.OPTIMIZER_STATE] = 1.0 / w.gpus
        out.scale[Category.OPTIMIZER_TEMP] = 1.0 / w.gpus
    out.notes.append(
        f"ZERO1 on {w.gpus} GPUs (one unsharded rank simulated, the optimizer state and its step split "
        f"{w.gpus} ways on its log); weights and gradients stay whole, communication buckets are not counted.")
