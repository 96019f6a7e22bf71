"""Walk one steady-state training step stage by stage and find its peak.

Step 2 of a run: weights and optimizer state exist, gradients are None
(zero_grad(set_to_none=True)). The forward pass adds each stage's saved
tensors; the backward pass walks the stages in reverse, allocating each
trainable tensor's gradient when it is produced and freeing the stage's
saved tensors after it; the model output (logits, vision hidden states) is
dropped after backward; then optimizer.step() runs with all gradients and
its temporaries. The peak is the largest total over those moments.

`walk` is the unsharded step (one GPU, DDP, ZeRO-1: whole weights and gradients);
`walk_fsdp2` the same stages on one rank of an FSDP2 run (ZeRO-2, ZeRO-3, FSDP), with
FSDP2's gathered weights and gradient buffers at each moment (freezelab.memory.fsdp2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from freezelab.memory.fsdp2 import ROOT, Fsdp2, Gathered
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
    def __init__(self, r: Resident, inputs: int, workspace: int) -> None:
        self.r, self.inputs, self.workspace = r, inputs, workspace
        self.live = {c: 0 for c in ACTIVATION_GROUPS}
        self.grads = 0
        self.moments: list[Moment] = []

    def snapshot(self, phase: Phase, stage: str, transient: int = 0, component: ActivationGroup | None = None,
                 temp: int = 0, sharded: Gathered | None = None) -> None:
        """One moment. `sharded`: FSDP2's gathered weights and gradient buffers at this moment (they replace
        the whole gradients of the unsharded step)."""
        acts = dict(self.live)
        if component:
            acts[component] += transient
        parts = dict.fromkeys(CATEGORIES, 0)
        if sharded is not None:
            parts[Category.WEIGHTS] = self.r.weights + sharded.weights
            parts[Category.GRADIENTS] = sharded.grads
        else:
            parts[Category.WEIGHTS] = self.r.weights
            parts[Category.GRADIENTS] = self.grads + self.r.buckets
        parts[Category.OPTIMIZER_STATE] = self.r.state
        parts[Category.OPTIMIZER_TEMP] = temp
        parts[Category.ACTIVATIONS] = self.inputs + sum(v for c, v in acts.items() if c != HEAD)
        parts[Category.LOGITS_LOSS] = acts[HEAD]
        parts[Category.WORKSPACE] = self.workspace
        self.moments.append(Moment(phase, stage, parts, acts))


class _PeakWalker(_Walker):
    """The same walk keeping only the largest total (many walks of one step: how many GPUs it needs)."""

    def __init__(self, r: Resident, inputs: int, workspace: int) -> None:
        super().__init__(r, inputs, workspace)
        self.best = 0

    def snapshot(self, phase: Phase, stage: str, transient: int = 0, component: ActivationGroup | None = None,
                 temp: int = 0, sharded: Gathered | None = None) -> None:
        held = self.r.weights + self.r.state + temp + self.inputs + self.workspace + sum(self.live.values())
        held += transient if component else 0
        held += sharded.weights + sharded.grads if sharded is not None else self.grads + self.r.buckets
        self.best = max(self.best, held)


def _result(w: _Walker, end_of_forward: dict[ActivationGroup, int]) -> Timeline | int:
    if isinstance(w, _PeakWalker):
        return w.best
    return Timeline(max(w.moments, key=lambda m: m.total), end_of_forward, w.moments)


def walk(stages: list[Stage], r: Resident, *, inputs: int, workspace: int,
         grad_bytes: Callable[[Stage], int], first_grad: Callable[[Stage], int] | None = None,
         peak_only: bool = False) -> Timeline | int:
    """The walk of the unsharded step (one GPU, DDP, ZeRO-1). A stage's backward is two moments: its
    transient peak with the first (largest) of its weight gradients (`first_grad`), then all of them
    (`grad_bytes`) once the transient is gone. `peak_only`: just the peak's total."""
    w = (_PeakWalker if peak_only else _Walker)(r, inputs, workspace)
    for s in stages:
        w.snapshot(Phase.FORWARD, s.name, s.fwd_extra, s.component)
        w.live[s.component] += s.keeps + s.forward_only
    for s in stages:  # leaving the autocast region drops its weight cache
        w.live[s.component] -= s.forward_only
    end_of_forward = dict(w.live)
    backward = [s for s in stages if s.backward]
    for s in reversed(backward):
        total = grad_bytes(s)
        first = total if first_grad is None else first_grad(s)
        w.grads += first
        w.snapshot(Phase.BACKWARD, s.name, s.bwd_extra, s.component)
        if total > first:
            w.grads += total - first
            w.snapshot(Phase.BACKWARD, s.name, 0, s.component)
        w.live[s.component] -= s.kept
    for s in stages:  # the model output (logits, vision states) goes; what only it referenced with it
        w.live[s.component] -= s.held + (s.kept if not s.backward else 0)
    if backward:
        w.snapshot(Phase.OPTIMIZER, "optimizer.step", temp=r.step_temp)
    return _result(w, end_of_forward)


def walk_fsdp2(stages: list[Stage], r: Resident, fs: Fsdp2, unit: Callable[[Stage], str], *, inputs: int,
               workspace: int, grads: Callable[[Stage], list[tuple[str, int]]],
               has_grad: Callable[[int], bool], peak_only: bool = False) -> Timeline | int:
    """The walk of one rank of an FSDP2 step: the same activations, with FSDP2's buffers at each moment
    (freezelab.memory.fsdp2): copy-out moments at each unit's pre-forward, the prefetches of backward, the
    reduce-scatters at each post-backward, the root's at the end. A stage's backward is two moments: its
    transient peak with the first (largest) of its weight gradients, then all of them once the transient
    is gone (`grads(s)`: (unit, bytes) per gradient the stage produces). `peak_only`: just the peak's total."""
    w = (_PeakWalker if peak_only else _Walker)(r, inputs, workspace)
    for g in fs.forward_start():
        w.snapshot(Phase.FORWARD, "root.all_gather", sharded=g)
    prev = ROOT
    for s in stages:
        u = unit(s)
        if u != prev:
            fs.leave(prev)
            for g in fs.enter(u):
                w.snapshot(Phase.FORWARD, f"{s.name}.all_gather", sharded=g)
        w.snapshot(Phase.FORWARD, s.name, s.fwd_extra, s.component, sharded=fs.now())
        w.live[s.component] += s.keeps + s.forward_only
        prev = u
    fs.leave(prev)
    fs.forward_end()
    for s in stages:
        w.live[s.component] -= s.forward_only
    end_of_forward = dict(w.live)
    backward = [s for s in stages if s.backward]
    if backward:
        fs.backward_start()
    prev = ROOT
    for s in reversed(backward):
        u = unit(s)
        if u != prev and prev != ROOT:
            fs.backward_leave(prev, has_grad)
        fs.backward_enter(u)
        made = sorted(grads(s), key=lambda g: -g[1])
        for owner, nbytes in made[:1]:
            fs.produced(owner, nbytes)
        w.snapshot(Phase.BACKWARD, s.name, s.bwd_extra, s.component, sharded=fs.now())
        for owner, nbytes in made[1:]:
            fs.produced(owner, nbytes)
        if len(made) > 1:
            w.snapshot(Phase.BACKWARD, s.name, sharded=fs.now())
        w.live[s.component] -= s.kept
        prev = u
    if prev != ROOT:
        fs.backward_leave(prev, has_grad)
    for g in fs.backward_end(has_grad):
        w.snapshot(Phase.BACKWARD, "root.reduce_scatter", sharded=g)
    for s in stages:
        w.live[s.component] -= s.held + (s.kept if not s.backward else 0)
    if backward:
        w.snapshot(Phase.OPTIMIZER, "optimizer.step", temp=r.step_temp, sharded=fs.now())
    return _result(w, end_of_forward)
