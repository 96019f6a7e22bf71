"""Walk one steady-state training step stage by stage and find its peak.

Step 2 of a run: weights and optimizer state exist, gradients are None
(zero_grad(set_to_none=True)). The forward pass adds each stage's saved
tensors; the backward pass walks the stages in reverse, allocating each
trainable tensor's gradient when it is produced and freeing the stage's
saved tensors after it; the model output (logits, vision hidden states) is
dropped after backward; then optimizer.step() runs with all gradients and
its temporaries. The peak is the largest total over those moments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from freezelab.memory.result import CATEGORIES, Category, Phase
from freezelab.memory.sharding import Resident
from freezelab.memory.stages import ACTIVATION_GROUPS, HEAD, ActivationGroup, Stage


@dataclass
class Moment:
    phase: Phase               # forward | backward | optimizer
    stage: str                 # the stage running (or "optimizer.step")
    parts: dict[Category, int]
    activations: dict[ActivationGroup, int] = field(default_factory=dict)  # kept + transient

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass
class Timeline:
    peak: Moment
    end_of_forward: dict[ActivationGroup, int]  # bytes each group keeps for backward after the forward
    moments: list[Moment]


class _Walker:
    def __init__(self, r: Resident, inputs: int, workspace: int, grad_bytes: Callable[[Stage], int],
                 grad_divisor: int) -> None:
        self.r, self.inputs, self.workspace = r, inputs, workspace
        self.grad_bytes, self.div = grad_bytes, max(1, grad_divisor)
        self.live = {c: 0 for c in ACTIVATION_GROUPS}
        self.grads = 0
        self.moments: list[Moment] = []

    def snapshot(self, phase: Phase, stage: str, transient: int = 0, component: ActivationGroup | None = None,
                 gathered: bool = True, extra_grads: int = 0, temp: int = 0) -> None:
        acts = dict(self.live)
        if component:
            acts[component] += transient
        parts = dict.fromkeys(CATEGORIES, 0)
        parts[Category.WEIGHTS] = self.r.weights + (self.r.gathered_weights if gathered else 0)
        parts[Category.GRADIENTS] = -(-self.grads // self.div) + self.r.buckets + extra_grads
        parts[Category.OPTIMIZER_STATE] = self.r.state
        parts[Category.OPTIMIZER_TEMP] = temp
        parts[Category.ACTIVATIONS] = self.inputs + sum(v for c, v in acts.items() if c != HEAD)
        parts[Category.LOGITS_LOSS] = acts[HEAD]
        parts[Category.WORKSPACE] = self.workspace
        self.moments.append(Moment(phase, stage, parts, acts))


def walk(stages: list[Stage], r: Resident, *, inputs: int, workspace: int,
         grad_bytes: Callable[[Stage], int], grad_divisor: int = 1) -> Timeline:
    w = _Walker(r, inputs, workspace, grad_bytes, grad_divisor)
    for s in stages:
        w.snapshot(Phase.FORWARD, s.name, s.fwd_extra, s.component)
        w.live[s.component] += s.keeps + s.forward_only
    for s in stages:  # leaving the autocast region drops its weight cache
        w.live[s.component] -= s.forward_only
    end_of_forward = dict(w.live)
    backward = [s for s in stages if s.backward]
    for s in reversed(backward):
        w.grads += grad_bytes(s)
        w.snapshot(Phase.BACKWARD, s.name, s.bwd_extra, s.component, extra_grads=r.gathered_grads)
        w.live[s.component] -= s.kept
    for s in stages:  # the model output (logits, vision states) goes; what only it referenced with it
        w.live[s.component] -= s.held + (s.kept if not s.backward else 0)
    if backward:
        w.snapshot(Phase.OPTIMIZER, "optimizer.step", gathered=False, temp=r.step_temp)
    peak = max(w.moments, key=lambda m: m.total)
    return Timeline(peak, end_of_forward, w.moments)
