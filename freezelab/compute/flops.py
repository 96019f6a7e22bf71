"""Exact FLOPs of one training step under a freeze plan, from the memory estimator's stages.

`step_flops(index, mask, workload)` walks the same stages the analytic memory estimate
walks (each op of each stage recorded its `Cost` on the tape) and adds up, per stage:

* forward: every stage that runs, including vision layers behind the feature layer (they
  run but no gradient reaches them);
* backward-input and backward-weight: only stages the backward runs through, and inside
  them only the products whose input requires grad (backward-input) or whose weight trains
  (backward-weight). So a frozen layer after a trainable part runs its backward for the input
  gradient only, and everything before the first trainable parameter runs no backward at all
  (unless gradient checkpointing's input-embedding hooks make it build a graph); with nothing
  trainable no backward runs (there is nothing to train, as in the simulated protocol);
* recompute: a checkpointed layer replays its forward in the backward pass, up to the last op
  that saved tensors for backward (non-reentrant checkpointing stops early: in a transformer
  layer everything but the last Linear).

With adapters (`adapters=`, freezelab.adapters), each adapted Linear adds PEFT's LoRA ops on the same
tape: A and B's matmuls (forward, backward-input, and backward-weight for the adapters), DoRA's
weight-norm products, while the frozen base Linear beside them runs its backward for the input
gradient only. Adapter parameters count as trainable for the optimizer step (fp32, as PEFT keeps them).

The FLOPs are the matmul-class FLOPs `torch.utils.flop_counter.FlopCounterMode` counts (see
`freezelab.compute.cost`), so `counted` equals what it reports on the simulated step. The
optimizer step's elementwise FLOPs and the bytes of bandwidth-bound ops are given beside them
(`optimizer`, `traffic`) for the time model; FlopCounterMode counts neither.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from freezelab.adapters import Adapters
from freezelab.compute.cost import Cost
from freezelab.errors import FreezelabError
from freezelab.index import ModelIndex
from freezelab.memory.analytic import followed, step_stages
from freezelab.memory.stages import HEAD, Stage
from freezelab.workload import DTYPE_BYTES, Sharding, Workload


class Group(StrEnum):
    """Where FLOPs are spent (the loss belongs to the head)."""

    VISION = "vision"
    PROJECTOR = "projector"
    LLM = "llm"
    LM_HEAD = "lm_head"


GROUPS: tuple[Group, ...] = tuple(Group)

# optimizer.step() per trainable element: (FLOPs, bytes per element in units of the parameter's
# element size, further bytes), read from torch 2.13's torch/optim and bitsandbytes' kernels:
# AdamW (foreach) reads p, g, m, v and writes p, m, v (7) and writes and reads sqrt(v) (2); fused
# AdamW updates in one pass (7); SGD reads p and g and writes p (3), with momentum also the buffer
# (5); 8-bit AdamW moves p and g as usual (3) and 1-byte moments (4 bytes); Adafactor reads g and
# its square for the row and column means, forms the estimate and the update (8). The paged
# variants run the same kernels on state in unified memory.
OPTIMIZER_WORK: dict[str, tuple[int, int, int]] = {
    "adamw": (14, 9, 0),
    "adamw-fused": (14, 7, 0),
    "sgd": (2, 3, 0),
    "sgd-momentum": (4, 5, 0),
    "adamw-8bit": (14, 3, 4),
    "adafactor": (12, 8, 0),
    "paged-adamw": (14, 9, 0),
    "paged-adamw-8bit": (14, 3, 4),
}
SHARDED_OPTIMIZER = (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3, Sharding.FSDP)


@dataclass(frozen=True)
class Split:
    """FLOPs of one part of the step, by what they compute."""

    forward: int = 0
    backward_input: int = 0
    backward_weight: int = 0
    recompute: int = 0

    def __add__(self, other: Split) -> Split:
        return Split(self.forward + other.forward, self.backward_input + other.backward_input,
                     self.backward_weight + other.backward_weight, self.recompute + other.recompute)

    @property
    def backward(self) -> int:
        """Everything the backward pass runs, recomputed forwards included (FlopCounterMode's
        count inside `loss.backward()`)."""
        return self.backward_input + self.backward_weight + self.recompute

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "backward": self.backward, "total": self.total}


@dataclass(frozen=True)
class StageFlops:
    name: str       # the stage: "vision.layers.3", "projector", "llm.layers.31", "lm_head", ...
    group: Group
    split: Split
    dead: bool = False  # runs, but feeds nothing the loss depends on (vision layers behind the feature layer)


@dataclass(frozen=True)
class Traffic:
    """Bytes of one step the time model charges to memory or network bandwidth (one GPU)."""

    forward: int = 0            # bandwidth-bound ops (norms, activations, casts, softmax, loss) in the forward
    backward: int = 0           # ... in the backward, recomputed forwards included
    optimizer: int = 0          # optimizer.step() over this GPU's trainable elements
    weights: int = 0            # every weight (what ZeRO-3 / FSDP gathers for the forward)
    backward_weights: int = 0   # weights of the stages the backward runs through (gathered again)
    gradients: int = 0          # gradients the plan makes (what data parallelism reduces)


@dataclass(frozen=True)
class Flops:
    """FLOPs of one training step (per GPU: `batch` is the per-GPU micro-batch)."""

    split: Split                       # the whole step
    by_component: dict[Group, Split]
    by_stage: tuple[StageFlops, ...]
    attention: Split                   # of `split`, the attention products
    causal_attention: Split            # of `attention`, the LLM's causal attention in fused kernels
    optimizer: int                     # elementwise FLOPs of optimizer.step() (not in `counted`)
    traffic: Traffic = field(default_factory=Traffic)
    tokens: int = 0                    # LLM tokens in the step

    @property
    def forward(self) -> int:
        return self.split.forward

    @property
    def backward(self) -> int:
        return self.split.backward

    @property
    def counted(self) -> int:
        """What FlopCounterMode counts over forward and backward."""
        return self.split.total

    @property
    def total(self) -> int:
        return self.counted + self.optimizer

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.split.to_dict(), "optimizer": self.optimizer, "counted": self.counted,
            "total_with_optimizer": self.total, "tokens": self.tokens,
            "by_component": {str(g): s.to_dict() for g, s in self.by_component.items()},
            "by_stage": [{"name": s.name, "component": str(s.group), **s.split.to_dict()} for s in self.by_stage],
            "attention": self.attention.to_dict(), "causal_attention": self.causal_attention.to_dict(),
            "traffic_bytes": asdict(self.traffic),
        }


def _group(stage: Stage) -> Group:
    return Group.LM_HEAD if stage.component == HEAD else Group(str(stage.component))


def _stage_split(s: Stage, trains: bool) -> tuple[Split, Split]:
    """(FLOPs, attention FLOPs) of one stage in this step."""
    c = s.cost
    if not (s.backward and trains):
        return Split(c.forward), Split(c.attention_forward)
    r = s.replay or Cost()
    return (Split(c.forward, c.backward_input, c.backward_weight, r.forward),
            Split(c.attention_forward, c.attention_backward, 0, r.attention_forward))


def _stage_bytes(s: Stage, trains: bool) -> tuple[int, int]:
    c = s.cost
    if not (s.backward and trains):
        return c.forward_bytes, 0
    return c.forward_bytes, c.backward_bytes + (s.replay.forward_bytes if s.replay else 0)


def _traffic(index: ModelIndex, mask: list[bool], w: Workload, stages: list[Stage],
             elem: int, adapters: Adapters | None) -> tuple[Traffic, int]:
    """The step's bandwidth-bound bytes, and the optimizer's FLOPs (on this GPU); adapters in fp32."""
    fwd = bwd = 0
    trains = _trains(mask, adapters)
    for s in stages:
        f, b = _stage_bytes(s, trains)
        fwd, bwd = fwd + f, bwd + b
    backward = {i for s in stages if s.backward for i in s.grad_params}
    adapted = adapters.by_weight() if adapters is not None else {}
    dora = adapters is not None and adapters.dora
    extra_numel = sum(a.numel(dora) for weight, a in adapted.items() if weight in backward)
    with_grad = sum(index.params[i].numel for i in backward if mask[i])
    flops, per, extra = OPTIMIZER_WORK[w.optimizer]
    share = w.gpus if w.gpus > 1 and w.sharding in SHARDED_OPTIMIZER else 1
    steps = 0 if w.offload_optimizer else -(-with_grad // share)
    adapter_steps = 0 if w.offload_optimizer else -(-extra_numel // share)
    return Traffic(
        forward=fwd, backward=bwd, optimizer=steps * (per * elem + extra) + adapter_steps * (per * 4 + extra),
        weights=sum(p.numel for p in index.params) * elem + sum(a.numel(dora) for a in adapted.values()) * 4,
        backward_weights=sum(index.params[i].numel for i in backward) * elem + extra_numel * 4,
        gradients=with_grad * elem + extra_numel * 4), (steps + adapter_steps) * flops


def _trains(mask: list[bool], adapters: Adapters | None) -> bool:
    """Whether anything trains: a base parameter or an adapter."""
    return any(mask) or (adapters is not None and bool(adapters.layers))


def flops_of(stages: list[Stage], index: ModelIndex, mask: list[bool], w: Workload, tokens: int,
             adapters: Adapters | None = None) -> Flops:
    """Add up built stages (`freezelab.memory.stages.build`) into the step's FLOPs."""
    total, attention = Split(), Split()
    by_component = dict.fromkeys(GROUPS, Split())
    by_stage: list[StageFlops] = []
    causal = Split()
    trains = _trains(mask, adapters)
    for s in stages:
        split, att = _stage_split(s, trains)
        total, attention = total + split, attention + att
        group = _group(s)
        by_component[group] = by_component[group] + split
        if group is Group.LLM and w.attn != "eager":
            causal = causal + att
        if split.total:
            by_stage.append(StageFlops(s.name, group, split, s.dead))
    traffic, optimizer = _traffic(index, mask, w, stages, DTYPE_BYTES[w.dtype], adapters)
    return Flops(total, by_component, tuple(by_stage), attention, causal, optimizer, traffic, tokens)


class FlopsError(FreezelabError):
    """The FLOPs model does not follow this model or workload."""


def flops_followed(index: ModelIndex, w: Workload) -> str | None:
    """Why the analytic FLOPs (and so the step time) do not follow this model or workload, or None.

    They follow wherever the analytic estimate does: every op of every modelled family (the LLaVA
    classes and those of freezelab.memory.image_paths) charges its FLOPs on the tape, equal to
    FlopCounterMode's count on the simulated step (tests/test_flops.py, tests/test_family_flops.py,
    benchmarks/flops_agreement.py). Elsewhere (a family or a video the estimate does not model, run
    with --method simulate) the simulation's own FlopCounterMode count is the one to read."""
    return followed(index, w)


def step_flops(index: ModelIndex, mask: list[bool], workload: Workload, *,
               input_require_grads: bool | None = None, adapters: Adapters | None = None) -> Flops:
    """FLOPs of one steady-state training step of `index` with trainable `mask` under `workload`
    (`input_require_grads` and `adapters` as for `freezelab.memory.analytic.estimate`); a model or
    workload `flops_followed` refuses raises FlopsError."""
    why = flops_followed(index, workload)
    if why is not None:
        raise FlopsError(why)
    flow, stages = step_stages(index, mask, workload, input_require_grads, adapters)
    return flops_of(stages, index, mask, workload, workload.batch * flow.seq, adapters)

