"""Per-session state of the dashboard.

A `Session` is an immutable value: every event returns a new one, so two
browser sessions can never share or mutate each other's plan or workload, and
a handler that fails simply leaves the previous value in place. A session
holds only the model's spec string, not its index: indexes live in the
process-wide `freezelab.model_cache.ModelCache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from freezelab.compute.timing import Efficiency
from freezelab.plans import Plan
from freezelab.workload import Workload

DEFAULT_MODEL = "tiny"
MAX_HISTORY = 100          # undo steps kept per session


@dataclass(frozen=True)
class TreeOptions:
    query: str = ""            # substring filter on module paths and class names
    depth: int | None = None   # deepest module level shown; None: all


@dataclass(frozen=True)
class Session:
    model: str = DEFAULT_MODEL          # the MODEL spec the index was loaded from
    weights: bool = False               # the sanity step loads the checkpoint's weights
    plan: Plan = field(default_factory=Plan)
    history: tuple[Plan, ...] = ()      # undo stack, newest last
    workload: Workload = field(default_factory=Workload)
    tree: TreeOptions = field(default_factory=TreeOptions)
    efficiency: Efficiency = field(default_factory=Efficiency)  # the time model's fractions of peak
    context: bool | None = None         # memory charts include the CUDA context; None: the estimate's default
    gpu_count: bool = False             # the page shows how many GPUs (its section is open): computed only then

    def with_plan(self, plan: Plan) -> Session:
        """The session with a new plan; the old one goes on the undo stack (if it differs)."""
        if plan == self.plan:
            return self
        return replace(self, plan=plan, history=(*self.history, self.plan)[-MAX_HISTORY:])

    def undo(self) -> Session:
        if not self.history:
            return self
        return replace(self, plan=self.history[-1], history=self.history[:-1])

    @property
    def can_undo(self) -> bool:
        return bool(self.history)
