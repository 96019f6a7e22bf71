"""What one rank holds through a step of FSDP2 (`fully_shard` on every vision encoder layer and decoder
layer, then the root), moment by moment, from the index alone.

Read from torch 2.13's torch/distributed/fsdp/_fully_shard (_fsdp_param_group.py, _fsdp_param.py,
_fsdp_collectives.py) and checked against the simulation, which runs FSDP2 itself on a fake process
group (freezelab.memory.simulate.fsdp):

* Each parameter is split on dim 0 into N chunks of ceil(rows / N) rows (torch.chunk, padded): rank 0
  keeps a full chunk of every parameter, one allocation each; frozen parameters are sharded like the
  others (their shard is what they cost).
* Unsharding a unit all-gathers into one flat buffer (N x its padded shards), then copies out into one
  buffer per parameter (the unsharded parameters). In forward the flat buffer stays referenced until the
  next unit has copied out (so three units' worth is alive for a moment: the previous flat buffer, this
  one, and this unit's parameters); the root's post-forward drops the last one. In backward the flat
  buffer goes right after the copy-out, and each unit's pre-backward prefetches the next unit in reverse
  post-forward order (its flat buffer), whether or not that unit's backward will run.
* The root is never resharded after forward (it is needed first in backward), and resharded at the end
  of backward. Its gradients (lm_head, embeddings, projector) stay unsharded until then.
* Post-backward of a unit: its unsharded parameters are freed, the previous unit's reduce-scatter input is
  released, its gradients are copied into one reduce-scatter input (N x padded shards of the parameters
  that got a gradient) and freed, and its sharded gradients are one flat buffer (1/N of that input).
* ZeRO-2 is FSDP2 with reshard_after_forward=False: every unit stays gathered from its forward until its
  post-backward (units the backward never reaches: until the end of backward); nothing is prefetched.
* With CPUOffloadPolicy (`fsdp` with optimizer offload) the shards and the sharded gradients live in host
  memory; only gathered units and the buffers of the unit being reduced are on the GPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from freezelab.index import ModelIndex
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.optimizer_state import Tensor

ROOT = "root"


def padded_rows(shape: tuple[int, ...], n: int) -> int:
    """Elements of one rank's padded shard: ceil(rows / n) rows of the other dimensions."""
    if not shape:
        return 1
    rest = 1
    for d in shape[1:]:
        rest *= d
    return -(-shape[0] // n) * rest


def unit_of(index: ModelIndex, i: int) -> str:
    """The FSDP2 unit parameter `i` belongs to: its layer's stage name, or the root."""
    p = index.params[i]
    if p.layer is not None and p.part in ("vision.layers", "llm.layers"):
        return f"{p.component}.layers.{p.layer}"
    return ROOT


@dataclass
class Unit:
    params: list[int] = field(default_factory=list)
    flat: int = 0           # the all-gather output: N x its padded shards, one buffer
    unsharded: int = 0      # its parameters, gathered: one buffer each
    shards: int = 0         # this rank's padded shards, one buffer each


@dataclass(frozen=True)
class Layout:
    """How FSDP2 splits one index over N ranks: its units, and per parameter its unit and padded shard."""

    units: dict[str, Unit]
    unit: list[str]          # per parameter
    rows: list[int]          # per parameter: elements of one rank's padded shard
    local: list[Tensor]      # per parameter: rank 0's shard, as the optimizer sees it


_LAYOUTS: dict[tuple[int, int, int], tuple[weakref.ReferenceType[ModelIndex], Layout]] = {}


def layout(index: ModelIndex, elem: int, n: int) -> Layout:
    """The layout of `index` over `n` ranks in `elem`-byte elements (memoised per index, dropped with it)."""
    key = (id(index), elem, n)
    hit = _LAYOUTS.get(key)
    if hit is not None and hit[0]() is index:
        return hit[1]
    out = _layout(index, elem, n)
    _LAYOUTS[key] = (weakref.ref(index, lambda _ref, k=key: _LAYOUTS.pop(k, None)), out)
    return out


def units(index: ModelIndex, elem: int, n: int) -> dict[str, Unit]:
    """Each unit's parameters and buffer sizes for N ranks."""
    return layout(index, elem, n).units


def _layout(index: ModelIndex, elem: int, n: int) -> Layout:
    out: dict[str, Unit] = {}
    names, all_rows, local = [], [], []
    for i, p in enumerate(index.params):
        name = unit_of(index, i)
        u = out.setdefault(name, Unit())
        rows = padded_rows(p.shape, n)
        names.append(name)
        all_rows.append(rows)
        local.append(Tensor((-(-(p.shape or (1,))[0] // n), *p.shape[1:]), rows))
        u.params.append(i)
        u.flat += rows * n
        u.unsharded += rounded(rows * n * elem)
        u.shards += rounded(rows * elem)
    for u in out.values():
        u.flat = rounded(u.flat * elem)
    return Layout(out, names, all_rows, local)


@dataclass
class Gathered:
    """FSDP2's buffers on one rank at one moment."""

    weights: int            # gathered parameters and all-gather buffers (the shards are resident)
    grads: int              # unsharded gradients, reduce-scatter inputs and sharded gradients


class Fsdp2:
    """The state machine of FSDP2's buffers as the walker moves through the stages (running totals, so
    that a moment costs nothing: a step is walked for up to 64 GPUs on every dashboard click)."""

    def __init__(self, index: ModelIndex, mask: list[bool], elem: int, n: int, reshard_after_forward: bool,
                 offload: bool) -> None:
        self.index, self.mask, self.elem, self.n = index, mask, elem, n
        self.reshard = reshard_after_forward
        self.offload = offload
        self.layout = layout(index, elem, n)
        self.units = self.layout.units
        self.gathered: set[str] = set()       # units whose parameters are unsharded
        self.flats: set[str] = set()          # units whose flat all-gather buffer is alive
        self.fwd_order: list[str] = []        # units in post-forward order
        self.unsharded_grads: dict[str, int] = {}
        self.rs_input = 0                     # the last reduce-scatter input, kept until the next
        self.sharded_grads = 0
        self.backward_started: set[str] = set()
        self.finished: set[str] = set()       # post-backward done
        self._weights = self._grads = 0       # running totals of gathered / flat and of unsharded gradients

    # -- sizes -----------------------------------------------------------------------------
    def shards(self) -> int:
        return 0 if self.offload else sum(u.shards for u in self.units.values())

    def now(self) -> Gathered:
        return Gathered(self._weights, self._grads + self.rs_input + (0 if self.offload else self.sharded_grads))

    def _grad_rows(self, unit: str, has_grad: Callable[[int], bool]) -> int:
        rows = self.layout.rows
        return sum(rows[i] for i in self.units[unit].params if has_grad(i))

    def _gather(self, unit: str, on: bool) -> None:
        if on != (unit in self.gathered):
            (self.gathered.add if on else self.gathered.discard)(unit)
            self._weights += self.units[unit].unsharded * (1 if on else -1)

    def _flat(self, unit: str, on: bool) -> None:
        if on != (unit in self.flats):
            (self.flats.add if on else self.flats.discard)(unit)
            self._weights += self.units[unit].flat * (1 if on else -1)

    def _drop_grads(self, unit: str) -> None:
        self._grads -= self.unsharded_grads.pop(unit, 0)

    # -- forward -----------------------------------------------------------------------------
    def forward_start(self) -> list[Gathered]:
        """The root's pre-forward: its flat buffer and parameters (kept through backward)."""
        self._flat(ROOT, True)
        self._gather(ROOT, True)
        return [self.now()]

    def enter(self, unit: str) -> list[Gathered]:
        """A unit's pre-forward; returns the copy-out moment (previous flat buffer still alive)."""
        if unit == ROOT or unit in self.gathered and unit in self.fwd_order:
            return []
        self._flat(unit, True)
        self._gather(unit, True)
        moment = self.now()
        for other in list(self.flats):
            if other != unit:
                self._flat(other, False)
        return [moment]

    def leave(self, unit: str) -> None:
        """A unit's post-forward."""
        if unit == ROOT:
            return
        self.fwd_order.append(unit)
        if self.reshard:
            self._gather(unit, False)

    def forward_end(self) -> None:
        """The root's post-forward drops the last flat buffer; the root joins the post-forward order."""
        for other in list(self.flats):
            self._flat(other, False)

    # -- backward ----------------------------------------------------------------------------
    def _next(self, unit: str | None) -> str | None:
        order = self.fwd_order
        if unit is None:
            return order[-1] if order else None
        k = order.index(unit)
        return order[k - 1] if k > 0 else None

    def _prefetch(self, unit: str | None) -> None:
        target = self._next(unit)
        if target is not None and target not in self.gathered and target not in self.finished:
            self._flat(target, True)

    def backward_start(self) -> None:
        """The root's pre-backward prefetches the last unit."""
        self._prefetch(None)

    def backward_enter(self, unit: str) -> None:
        """A unit's pre-backward: copy-out (its prefetched flat buffer goes), then the next prefetch."""
        if unit == ROOT or unit in self.backward_started:
            return
        self.backward_started.add(unit)
        self._gather(unit, True)
        self._flat(unit, False)
        self._prefetch(unit)

    def produced(self, unit: str, grad_bytes: int) -> None:
        """Gradients autograd made for parameters of `unit` (unsharded until its post-backward)."""
        self.unsharded_grads[unit] = self.unsharded_grads.get(unit, 0) + grad_bytes
        self._grads += grad_bytes

    def backward_leave(self, unit: str, has_grad: Callable[[int], bool]) -> None:
        """A unit's post-backward: reshard, reduce-scatter its gradients."""
        if unit in self.finished:
            return
        self.finished.add(unit)
        self._gather(unit, False)
        rows = self._grad_rows(unit, has_grad)
        if not rows:
            return
        self._drop_grads(unit)
        self.rs_input = rounded(rows * self.n * self.elem)
        self.sharded_grads += rounded(rows * self.elem)

    def backward_end(self, has_grad: Callable[[int], bool]) -> list[Gathered]:
        """The final callback: the root (and any unit the backward did not reach) post-backward, then the
        pending reduce-scatter input and prefetched buffers released."""
        self._gather(ROOT, False)
        rows = self._grad_rows(ROOT, has_grad)
        moments = []
        if rows:
            self.rs_input = rounded(rows * self.n * self.elem)
            moments.append(self.now())
            self._drop_grads(ROOT)
            self.sharded_grads += rounded(rows * self.elem)
        for unit in self.units:
            self.finished.add(unit)
            self._gather(unit, False)
            self._flat(unit, False)
            self._drop_grads(unit)
        self.rs_input = 0
        return moments
