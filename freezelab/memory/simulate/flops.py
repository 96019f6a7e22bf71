"""FLOPs of the simulated step, counted by `torch.utils.flop_counter.FlopCounterMode`.

Step 2 of the simulation (the steady state) runs its forward and its backward each inside a
FlopCounterMode, so the backward's count includes the forwards that gradient checkpointing
replays. FlopCounterMode counts matmuls, convolutions and attention kernels by its own formulas
(torch/utils/flop_counter.py); each formula is wrapped so that what it counts is also charged to
the component the ledger's hooks say is running (vision tower, projector, LLM, head), in the
forward and in the backward alike. Elementwise ops, the loss and the optimizer step are not
counted, as FlopCounterMode does not count them.

Two parts of FlopCounterMode are left out because they would change the step the ledger books:
its module tracker (its backward hooks hold tensors the step would have freed) and its
decomposition of every op it has no formula for (it runs the op's composite pieces instead,
which allocate differently: +12 MiB at the peak of one llava-1.5-7b calibration case). Ops
without a formula count 0 FLOPs and run as the step runs them; the counts are unchanged.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from freezelab.memory.fake.ledger import TensorLedger
from freezelab.memory.result import Phase

COUNTER = "torch.utils.flop_counter.FlopCounterMode"
COUNTED_PHASES = (Phase.FORWARD, Phase.BACKWARD)


class StepFlops:
    """FLOPs per phase, per component and per ATen op of the steps counted."""

    def __init__(self, ledger: TensorLedger) -> None:
        self.ledger = ledger
        self.by_component: dict[Phase, dict[str, int]] = {p: defaultdict(int) for p in COUNTED_PHASES}
        self.by_op: dict[str, int] = defaultdict(int)
        self.totals: dict[Phase, int] = dict.fromkeys(COUNTED_PHASES, 0)

    def _attributing(self, formula: Callable[..., int], tally: dict[str, int]) -> Callable[..., int]:
        ledger = self.ledger

        def count(*args: Any, **kwargs: Any) -> int:
            flops = formula(*args, **kwargs)
            tally[str(ledger.component)] += flops
            return flops
        count._get_raw = True  # type: ignore[attr-defined]  # `formula` is already registered (wrapped)
        return count

    @contextlib.contextmanager
    def counting(self, phase: Phase) -> Iterator[None]:
        """Count what runs inside into `phase`."""
        from torch.utils.flop_counter import FlopCounterMode, flop_registry

        tally = self.by_component[phase]
        mapping = {op: self._attributing(f, tally) for op, f in flop_registry.items()}
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        counter.mod_tracker = _NoModules()  # per-module counts would hook every module's tensors
        counter.flop_registry = _EveryOp(counter.flop_registry)  # no decomposition of uncounted ops
        with counter:
            yield
        self.totals[phase] += counter.get_total_flops()
        for op, n in counter.get_flop_counts().get("Global", {}).items():
            if n:
                self.by_op[str(op)] += n

    def summary(self) -> dict[str, Any]:
        fwd, bwd = self.totals[Phase.FORWARD], self.totals[Phase.BACKWARD]
        components = sorted(set(self.by_component[Phase.FORWARD]) | set(self.by_component[Phase.BACKWARD]))
        return {
            "counter": COUNTER, "forward": fwd, "backward": bwd, "total": fwd + bwd,
            "by_component": {c: {"forward": self.by_component[Phase.FORWARD].get(c, 0),
                                 "backward": self.by_component[Phase.BACKWARD].get(c, 0)} for c in components},
            "by_op": dict(sorted(self.by_op.items())),
        }


def _no_flops(*args: Any, **kwargs: Any) -> int:
    return 0


class _EveryOp(dict):
    """FlopCounterMode's formulas, with every op taken as known: it decomposes an op only when the op
    is not `in` its registry, and an op without a formula counts 0 FLOPs."""

    def __contains__(self, op: object) -> bool:
        return True

    def __missing__(self, op: object) -> Callable[..., int]:
        return _no_flops


class _NoModules:
    """FlopCounterMode's module tracker, minus the tracking: everything is counted under "Global".
    ModuleTracker hooks every module's inputs and outputs for the backward, and the references its
    hooks hold keep tensors alive that the step would have freed, which the ledger would book."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _NoModules:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def counted(flops: StepFlops | None, phase: Phase) -> contextlib.AbstractContextManager[None]:
    """`flops.counting(phase)`, or nothing when this step is not counted."""
    return flops.counting(phase) if flops is not None else contextlib.nullcontext()
