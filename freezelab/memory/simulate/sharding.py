"""Sharding (DDP, ZeRO, FSDP) and optimizer offload, applied on one simulated rank's log.

The simulation runs one unsharded rank. What each strategy changes is then
applied to the ledger's log: categories scaled by 1/N (`scale`), and bytes
added per phase for the gathered working set of a sharded model or DDP's
gradient buckets (`extra`), before the peak is searched again
(`fake.log.scaled_peak`).
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
        return out
    if w.gpus > 1 and w.sharding == "ddp":
        _ddp(model, w, out)
    elif w.gpus > 1:
        _zero(model, w, out)
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


def _zero(model: torch.nn.Module, w: Workload, out: ShardingPlan) -> None:
    n = w.gpus
    if not w.offload_optimizer:
        out.scale[Category.OPTIMIZER_STATE] = 1.0 / n
        out.scale[Category.OPTIMIZER_TEMP] = 1.0 / n
    if w.sharding in ("zero2", "zero3", "fsdp"):
        out.scale[Category.GRADIENTS] = 1.0 / n
    if w.sharding not in ("zero3", "fsdp"):
        out.notes.append(
            f"{w.sharding.upper()} on {n} GPUs (one rank simulated, sharding applied "
            f"analytically): optimizer state{' and gradients' if w.sharding == 'zero2' else ''} "
            f"divided by {n}; communication buckets are not counted.")
        return
    out.scale[Category.WEIGHTS] = 1.0 / n
    root, unit, root_grad, unit_grad = fsdp_units(model)
    gathered = root * (1 - 1 / n) + 2 * unit * (1 - 1 / n)
    grad_ws = root_grad * (1 - 1 / n) + unit_grad

    def extra(phase: Phase, g: float = gathered, gw: float = grad_ws) -> dict[Category, float]:
        if phase is Phase.FORWARD:
            return {Category.WEIGHTS: g}
        if phase is Phase.BACKWARD:
            return {Category.WEIGHTS: g, Category.GRADIENTS: gw}
        return {}
    out.extra = extra
    out.notes.append(
        f"{w.sharding.upper()} on {n} GPUs (one rank simulated, sharding applied "
        f"analytically): weights, gradients and optimizer state are divided by {n}; "
        f"while computing, the gathered working set is the non-layer weights "
        f"({root / GiB:.2f} GiB, kept gathered like an FSDP root unit) plus two "
        f"layers (current and prefetched, {2 * unit / GiB:.2f} GiB); in backward also "
        f"one layer's unsharded gradients before reduce-scatter.")


def fsdp_units(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """(root weights, largest layer's weights, root gradients, largest layer's gradients) in bytes:
    each decoder / encoder layer is an FSDP unit, everything else the root unit."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    seen: set[int] = set()
    unit = unit_grad = 0
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            b = g = 0
            for p in m.parameters():
                seen.add(id(p))
                b += _nbytes(p)
                g += _nbytes(p) if p.requires_grad else 0
            unit = max(unit, b)
            unit_grad = max(unit_grad, g)
    root = root_grad = 0
    for p in model.parameters():
        if id(p) not in seen:
            root += _nbytes(p)
            root_grad += _nbytes(p) if p.requires_grad else 0
    return root, unit, root_grad, unit_grad
