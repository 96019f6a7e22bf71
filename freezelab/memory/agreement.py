"""The two estimators against each other over a grid of workloads.

The analytic estimate (`analytic`) and the simulated one (`simulate`) model the
same step in two independent ways: one walks a symbolic tape of what each op
saves, the other runs the real transformers step on fake tensors. Where they
disagree, one of them has the physics wrong. The grid is the cross product of
parameter dtype and autocast (the valid pairs: 16-bit parameters take no
autocast of the other 16-bit type), plan (every preset), gradient
checkpointing, optimizer and attention; each cell compares the two tensor
peaks and names the worst cell.

The compared figure is the peak without the cuBLAS workspaces (they are the
same fixed bytes in both, and on a tiny model they would hide everything
else); the workspaces themselves must be equal. The tolerance is what the
README claims for the grid (`claims.AGREEMENT_MAX`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from freezelab.index import ModelIndex
from freezelab.memory.claims import AGREEMENT_MAX
from freezelab.memory.result import Category, MemoryEstimate
from freezelab.plans import preset, preset_names, resolve
from freezelab.workload import Attention, Autocast, Dtype, Optimizer, Workload

TOLERANCE = AGREEMENT_MAX   # README, "Memory": the grid's worst cell on the tiny models and the shipped configs


@dataclass(frozen=True)
class Cell:
    """One workload of the grid (the batch shape is the grid's, the same in every cell)."""

    dtype: Dtype
    autocast: Autocast
    plan: str
    grad_ckpt: bool
    optimizer: Optimizer
    attn: Attention

    @property
    def label(self) -> str:
        amp = f"+autocast-{self.autocast}" if self.autocast != Autocast.NONE else ""
        return (f"{self.plan} {self.dtype}{amp} {'ckpt' if self.grad_ckpt else 'no-ckpt'} "
                f"{self.optimizer} {self.attn}")

    def workload(self, **shape: Any) -> Workload:
        return Workload(dtype=self.dtype, autocast=self.autocast, grad_ckpt=self.grad_ckpt,
                        optimizer=self.optimizer, attn=self.attn, **shape)


def numerics() -> list[tuple[Dtype, Autocast]]:
    """The valid (parameter dtype, autocast) pairs: fp32 with any autocast, 16-bit with none or its own."""
    return [(d, a) for d in Dtype for a in Autocast
            if a == Autocast.NONE or d == Dtype.FP32 or a.value == d.value]


def plans(last_n: int) -> list[str]:
    """Every preset, `last-N` with the N given."""
    return [name if name != "last-N" else f"last-{last_n}" for name in preset_names()]


def grid(last_n: int) -> list[Cell]:
    """The full cross product."""
    return [Cell(d, a, plan, ckpt, opt, attn)
            for (d, a), plan, ckpt, opt, attn in itertools.product(
                numerics(), plans(last_n), (False, True), Optimizer, Attention)]


def pairwise(cells: Sequence[Cell]) -> list[Cell]:
    """A subset of `cells` in which every pair of values of any two axes appears at least once
    (greedy covering: each pick covers the most pairs not yet covered; deterministic)."""
    def pairs(c: Cell) -> set[tuple[int, Any, int, Any]]:
        values = ((c.dtype, c.autocast), c.plan, c.grad_ckpt, c.optimizer, c.attn)
        return {(i, values[i], j, values[j]) for i, j in itertools.combinations(range(len(values)), 2)}

    todo = set().union(*(pairs(c) for c in cells)) if cells else set()
    chosen: list[Cell] = []
    while todo:
        best = max(cells, key=lambda c: len(pairs(c) & todo))
        chosen.append(best)
        todo -= pairs(best)
    return chosen


@dataclass(frozen=True)
class Agreement:
    cell: Cell
    analytic: MemoryEstimate
    simulated: MemoryEstimate

    def body(self, est: MemoryEstimate) -> int:
        """The peak without the cuBLAS / cuBLASLt workspaces (the analytic breakdown's workspace: in the
        simulated one, attention kernels' scratch counts there too)."""
        return est.peak_bytes - self.analytic.breakdown.get(Category.WORKSPACE, 0)

    @property
    def error(self) -> float:
        """(analytic - simulated) / simulated, of the peak without the cuBLAS workspaces."""
        sim = self.body(self.simulated)
        return (self.body(self.analytic) - sim) / max(1, sim)

    @property
    def workspaces_agree(self) -> bool:
        """Both hold the same cuBLAS workspaces at their peaks."""
        return self.analytic.cublas_workspaces == self.simulated.cublas_workspaces

    @property
    def device_error(self) -> float:
        """(analytic - simulated) / simulated, of the device figures (what nvidia-smi shows)."""
        sim = self.simulated.device_estimate_bytes
        return (self.analytic.device_estimate_bytes - sim) / max(1, sim)

    def describe(self) -> str:
        return (f"{self.cell.label}: analytic {self.body(self.analytic):,} B, simulated "
                f"{self.body(self.simulated):,} B without workspaces ({100 * self.error:+.2f}%); "
                f"device {100 * self.device_error:+.2f}%")


def compare(indexes: dict[Dtype, ModelIndex], config: Any, cell: Cell, *, last_n: int,
            **shape: Any) -> Agreement:
    """Both estimates of one cell: `indexes` holds the model's index per parameter dtype, `config` its
    transformers config (for the simulation); `shape` the batch (batch, text_tokens, images, ...)."""
    from freezelab.memory.analytic import estimate
    from freezelab.memory.simulate import simulate_step

    index = indexes[cell.dtype]
    res = resolve(preset(cell.plan, last_n), index)
    w = cell.workload(**shape)
    return Agreement(cell, estimate(index, res.mask, w), simulate_step(config, res.trainable_names(index), w))


def worst(results: Iterable[Agreement]) -> Agreement:
    return max(results, key=lambda r: abs(r.error))
