"""The per-parameter checks of the sanity step, on what the runner observed.

Pure Python: the runner turns tensors into an `Observation` (flags, norms,
fingerprint comparisons, optimizer membership) and these functions judge it,
so every check can be tested on hand-made observations as well as real runs.

A check of level "failure" failing means the plan does not train what it
says; a "warning" names something the user should know (parameters the
architecture never trains, updates too small for the weight dtype) without
failing the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from freezelab.index import COMPONENTS, ModelIndex
from freezelab.workload import Dtype

MAX_NAMES = 20  # offending names listed per check; `count` has the full number


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    level: str                                  # "failure" | "warning"
    message: str
    offending: tuple[str, ...] = ()             # first MAX_NAMES names
    count: int = 0                              # all offending tensors
    causes: dict[str, str] = field(default_factory=dict)  # name -> likely cause (listed names only)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "level": self.level, "message": self.message,
                "offending": list(self.offending), "count": self.count, "causes": dict(self.causes)}


@dataclass
class Observation:
    """What one sanity run saw, per parameter of the index (same order)."""

    mask: list[bool]                       # the plan: trainable?
    requires_grad: list[bool]              # the model's flags after the steps
    norms: list[list[float | None]]        # per completed step, per parameter: gradient norm, None = no gradient
    changed: list[bool]                    # weights differ after the steps (fingerprint)
    in_optimizer: list[int]                # times each parameter appears in the optimizer's groups
    foreign_in_optimizer: int = 0          # optimizer tensors that are not parameters of the model
    losses: list[float] = field(default_factory=list)
    merge: Any = None                      # freezelab.adapter_checks.Merge when the model has adapters


@dataclass(frozen=True)
class Context:
    """Facts about the run that explain a missing gradient."""

    images: int                            # images per sample in the batch
    dead: dict[str, str]                   # index.dead: architecture never reaches these
    input_grad_hooks: bool                 # transformers' input-embedding requires_grad hooks active
    reentrant_checkpointing: bool          # some block checkpoints with use_reentrant=True
    loss_required_grad: bool               # backward ran at all
    dtype: Dtype = Dtype.FP32
    lr: float = 1e-5


def _label(index: ModelIndex, i: int) -> str:
    p = index.params[i]
    return p.name + (f" (= {', '.join(p.aliases)})" if p.aliases else "")


def _check(name: str, level: str, index: ModelIndex, bad: list[int], ok_message: str, bad_message: str,
           causes: dict[int, str] | None = None) -> Check:
    if not bad:
        return Check(name, True, level, ok_message)
    shown = bad[:MAX_NAMES]
    labelled = {i: _label(index, i) for i in shown}
    why = {labelled[i]: causes[i] for i in shown if causes and i in causes}
    return Check(name, False, level, bad_message, tuple(labelled[i] for i in shown), len(bad), why)


def _grouped(causes: dict[int, str]) -> str:
    counts: dict[str, int] = {}
    for cause in causes.values():
        counts[cause] = counts.get(cause, 0) + 1
    return "; ".join(f"{n} x {cause}" for cause, n in counts.items())


# -- the checks ---------------------------------------------------------------------

def plan_applied(index: ModelIndex, obs: Observation) -> Check:
    bad = [i for i, (want, got) in enumerate(zip(obs.mask, obs.requires_grad)) if want != got]
    return _check("plan_applied", "failure", index, bad,
                  "every parameter's requires_grad matches the plan after the steps",
                  f"{len(bad)} tensors have requires_grad different from the plan: something changed the flags "
                  "behind the plan's back")


def optimizer(index: ModelIndex, obs: Observation) -> Check:
    """The optimizer holds exactly the plan's trainable tensors, each once (by identity)."""
    missing = [i for i, on in enumerate(obs.mask) if on and obs.in_optimizer[i] == 0]
    frozen = [i for i, on in enumerate(obs.mask) if not on and obs.in_optimizer[i] > 0]
    twice = [i for i, n in enumerate(obs.in_optimizer) if n > 1]
    parts = [f"{len(v)} {what}" for v, what in ((missing, "trainable tensors missing"), (frozen, "frozen tensors held"),
                                                (twice, "tensors held twice")) if v]
    if obs.foreign_in_optimizer:
        parts.append(f"{obs.foreign_in_optimizer} tensors that are not parameters of the model")
    if not parts:
        return Check("optimizer", True, "failure",
                     f"the optimizer holds exactly the plan's {sum(obs.mask)} trainable tensors")
    causes = {**{i: "trainable but not in the optimizer: it gets a gradient and is never updated" for i in missing},
              **{i: "frozen by the plan but held by the optimizer" for i in frozen},
              **{i: "held more than once by the optimizer" for i in twice}}
    bad = missing + frozen + twice
    shown = bad[:MAX_NAMES]
    return Check("optimizer", False, "failure", "the optimizer's parameters differ from the plan: " + ", ".join(parts),
                 tuple(_label(index, i) for i in shown), len(bad) + obs.foreign_in_optimizer,
                 {_label(index, i): causes[i] for i in shown})


def frozen_unchanged(index: ModelIndex, obs: Observation) -> Check:
    bad = [i for i, on in enumerate(obs.mask) if not on and obs.changed[i]]
    n = len(obs.mask) - sum(obs.mask)
    return _check("frozen_unchanged", "failure", index, bad,
                  f"all {n} frozen tensors are bit-identical after the steps",
                  f"{len(bad)} frozen tensors changed during the steps: something updates weights the plan freezes")


def no_gradient_cause(index: ModelIndex, i: int, ctx: Context) -> str:
    """The most likely reason trainable parameter `i` received no gradient."""
    p = index.params[i]
    if p.name in ctx.dead:
        return ctx.dead[p.name]
    if ctx.images == 0 and p.component in ("vision", "projector"):
        cause = ("text-only batch (images=0): the image pathway never runs, so vision tower and projector "
                 "get no gradient")
        if ctx.input_grad_hooks:
            cause += ("; gradient checkpointing's input-embedding hooks let backward run anyway, so a training "
                      "script would not raise an error here")
        return cause
    if ctx.reentrant_checkpointing and not ctx.input_grad_hooks:
        return ("reentrant gradient checkpointing with inputs that do not require grad: the checkpointed block's "
                "output is detached, so its parameters get no gradient (use use_reentrant=False, or "
                "enable_input_require_grads)")
    if not ctx.loss_required_grad:
        return "the loss does not depend on any trainable parameter, so backward never ran"
    if p.aliases:
        return (f"tied tensor (also {', '.join(p.aliases)}): none of its uses reached the loss")
    return "not reached by backward from the loss (an unused module, or code that detaches it)"


def _missing(obs: Observation) -> list[int]:
    return [i for i, on in enumerate(obs.mask) if on and any(step[i] is None for step in obs.norms)]


def gradients_present(index: ModelIndex, obs: Observation, ctx: Context) -> Check:
    bad = [i for i in _missing(obs) if index.params[i].name not in ctx.dead]
    causes = {i: no_gradient_cause(index, i, ctx) for i in bad}
    n = sum(1 for i, on in enumerate(obs.mask) if on and index.params[i].name not in ctx.dead)
    return _check("gradients_present", "failure", index, bad,
                  f"all {n} trainable tensors a gradient can reach received one in every step"
                  + (f" ({sum(obs.mask) - n} unreachable ones: see dead_parameters)" if n < sum(obs.mask) else ""),
                  f"{len(bad)} trainable tensors received no gradient: {_grouped(causes)}", causes)


def gradients_finite(index: ModelIndex, obs: Observation) -> Check:
    bad = [i for i, on in enumerate(obs.mask)
           if on and any(step[i] is not None and not math.isfinite(step[i]) for step in obs.norms)]
    return _check("gradients_finite", "failure", index, bad, "every gradient is finite",
                  f"{len(bad)} trainable tensors got a NaN or infinite gradient")


def gradients_nonzero(index: ModelIndex, obs: Observation) -> Check:
    from freezelab.adapter_checks import first_step_zero

    zero_first = first_step_zero(index, obs)  # LoRA A: zero in step 1 by design (adapter_start checks it)
    bad = [i for i, on in enumerate(obs.mask)
           if on and any(step[i] == 0.0 and not (n == 0 and i in zero_first) for n, step in enumerate(obs.norms))]
    return _check("gradients_nonzero", "failure", index, bad, "every gradient is non-zero",
                  f"{len(bad)} trainable tensors got an all-zero gradient: they are in the graph but learn nothing "
                  "(a hook or mask zeroes them, or their output is multiplied by zero)")


def loss_finite(index: ModelIndex, obs: Observation) -> Check:
    bad_steps = [n for n, loss in enumerate(obs.losses, 1) if not math.isfinite(loss)]
    if not bad_steps:
        return Check("loss_finite", True, "failure", "the loss is finite in every step")
    return Check("loss_finite", False, "failure", f"the loss is NaN or infinite in step(s) "
                 f"{', '.join(map(str, bad_steps))}")


def dead_parameters(index: ModelIndex, obs: Observation, ctx: Context) -> Check:
    bad = [i for i in _missing(obs) if index.params[i].name in ctx.dead]
    causes = {i: ctx.dead[index.params[i].name] for i in bad}
    numel = sum(index.numels[i] for i in bad)
    return _check("dead_parameters", "warning", index, bad,
                  "no trainable tensor is cut off by the architecture",
                  f"{len(bad)} trainable tensors ({numel:,} parameters) can never get a gradient in this "
                  f"architecture: {_grouped(causes)}; they inflate the trainable count and make DDP raise "
                  "unused-parameter errors", causes)


def weights_moved(index: ModelIndex, obs: Observation, ctx: Context) -> Check:
    got = [i for i, on in enumerate(obs.mask)
           if on and obs.norms and all(step[i] is not None and step[i] > 0 and math.isfinite(step[i])
                                       for step in obs.norms)]
    bad = [i for i in got if not obs.changed[i]]
    return _check("weights_moved", "warning", index, bad,
                  "every trainable tensor that got a gradient changed",
                  f"{len(bad)} trainable tensors got a non-zero gradient but did not change: the update "
                  f"(lr {ctx.lr:g}) is below the resolution of {ctx.dtype} weights; use fp32 weights with "
                  "autocast, or a larger learning rate")


def run_checks(index: ModelIndex, obs: Observation, ctx: Context) -> dict[str, Check]:
    """Every check; on the index of an adapted model also LoRA's start and the merge."""
    from freezelab.adapter_checks import adapter_start, lora_a, merge_matches

    checks = [plan_applied(index, obs), optimizer(index, obs), frozen_unchanged(index, obs),
              gradients_present(index, obs, ctx), gradients_finite(index, obs), gradients_nonzero(index, obs),
              loss_finite(index, obs), dead_parameters(index, obs, ctx), weights_moved(index, obs, ctx)]
    if lora_a(index) and obs.norms:
        checks.append(adapter_start(index, obs, ctx.dead))
    if obs.merge is not None:
        checks.append(merge_matches(index, obs.merge))
    return {c.name: c for c in checks}


def all_passed(checks: dict[str, Check]) -> bool:
    return all(c.passed for c in checks.values() if c.level == "failure")


# -- gradient norms per component and layer -------------------------------------------

def _combine(values: list[float]) -> float | None:
    if not values:
        return None
    return math.sqrt(sum(v * v for v in values))


def grad_norms(index: ModelIndex, mask: list[bool], norms: list[float | None]) -> dict[str, Any]:
    """L2 norm of the gradient per component and per layer (None where nothing trains)."""
    by_component: dict[str, list[float]] = {c: [] for c in COMPONENTS}
    by_layer = {tower: [[] for _ in paths] for tower, paths in index.layers.items()}
    trains_component = {c: False for c in COMPONENTS}
    trains_layer = {tower: [False] * len(paths) for tower, paths in index.layers.items()}
    for i, p in enumerate(index.params):
        if not mask[i]:
            continue
        trains_component[p.component] = True
        in_layer = p.layer is not None and p.component in by_layer and p.layer < len(by_layer[p.component])
        if in_layer:
            trains_layer[p.component][p.layer] = True
        if norms[i] is None:
            continue
        by_component[p.component].append(norms[i])
        if in_layer:
            by_layer[p.component][p.layer].append(norms[i])
    return {
        "component": {c: (_combine(v) or 0.0) if trains_component[c] else None for c, v in by_component.items()},
        "layers": {t: [(_combine(v) or 0.0) if trains_layer[t][k] else None for k, v in enumerate(layers)]
                   for t, layers in by_layer.items()},
    }
