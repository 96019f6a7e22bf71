"""What the trainable tensors whose gradients a step produces add up to: their gradients (in all,
per stage and the largest per stage), their optimizer state and the optimizer step's temporaries.

They depend only on which parameters the step's backward stages own (`analytic._grad_owner`), the
parameter element size and the optimizer, not on the batch or the sequence: the memory curve's
points and a plan's other workloads share them, so they are kept per index (`freezelab.index_memo`).
"""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index
from freezelab.memory import optimizer_state
from freezelab.memory.cuda_facts import rounded

PER_INDEX = 256


@dataclass(frozen=True)
class Owned:
    gradients: int                # every owned gradient, in 512-byte blocks
    state: int                    # the optimizer's state of the owned tensors
    step_temp: int                # the optimizer step's temporaries
    grad_of: dict[str, int]       # gradient bytes each stage produces
    first_of: dict[str, int]      # the largest gradient each stage produces


@per_index
def _kept(index: ModelIndex) -> Kept:
    return Kept(PER_INDEX)


def owned(index: ModelIndex, owner: dict[int, str], elem: int, optimizer: str) -> Owned:
    """The sums for `owner` (parameter index -> the stage producing its gradient, in backward order)."""
    return _kept(index).get((tuple(owner.items()), elem, optimizer), lambda: _sums(index, owner, elem, optimizer))


def _sums(index: ModelIndex, owner: dict[int, str], elem: int, optimizer: str) -> Owned:
    params = index.params
    live = [optimizer_state.Tensor(params[i].shape, params[i].numel) for i in owner]
    grad_of: dict[str, int] = {}
    first_of: dict[str, int] = {}
    total = 0
    for t, name in zip(live, owner.values()):
        size = rounded(t.numel * elem)
        total += size
        grad_of[name] = grad_of.get(name, 0) + size
        first_of[name] = max(first_of.get(name, 0), size)
    return Owned(total, optimizer_state.state_bytes(optimizer, live, elem),
                 optimizer_state.step_temp_bytes(optimizer, live, elem), grad_of, first_of)
