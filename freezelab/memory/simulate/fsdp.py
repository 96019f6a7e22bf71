"""One rank of an N-GPU FSDP2 step, simulated: torch's fake process group, the model sharded with
`fully_shard` on the meta device, then given fake storage.

`fully_shard` cannot run inside FakeTensorMode (its init reads a tensor value:
DataDependentOutputException on `aten._local_scalar_dense`), so the model is sharded while it is still
on the meta device, where FSDP2 only records shapes, and `to_empty()` inside the fake mode then gives
each rank's shards fake storage (FSDP2's own `_apply` re-pads them). Collectives of the fake process
group (`torch.testing._internal.distributed.fake_pg`) do nothing and return at once, so N can be 64 and
the step runs as rank 0 of N would: its all-gather and reduce-scatter buffers, FSDP2's prefetching and
the order in which it frees them are FSDP2's own.

FSDP2 frees and re-allocates unsharded parameters by resizing their storage
(`UntypedStorage.resize_`), which no dispatch mode sees: while a sharded simulation runs, resize_ is
wrapped (as torch.distributed._tools.mem_tracker does) so the ledger books it. Each parameter group's
unshard and post-backward are wrapped per instance (as FSDPMemTracker does) so that what they allocate is
booked as weights (gathered) and gradients (unsharded, reduce-scatter buffers, shards).

Only one sharded simulation runs at a time in a process (the default process group is process-wide);
the group is destroyed however the simulation ends.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from freezelab.errors import SimulationError
from freezelab.memory.fake.ledger import Label, TensorLedger
from freezelab.memory.result import Category
from freezelab.workload import Sharding

_GROUP_LOCK = threading.Lock()
_RESIZE_LOCK = threading.Lock()
_LEDGERS: list[TensorLedger] = []          # ledgers that want storage resizes, innermost last
_ORIGINAL_RESIZE: Callable[..., Any] | None = None


@contextlib.contextmanager
def fake_group(world_size: int) -> Iterator[Any]:
    """The fake default process group of `world_size` ranks (this process is rank 0) and its 1-D mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not _GROUP_LOCK.acquire(timeout=600):
        raise SimulationError("another sharded simulation has held the process group for 10 minutes")
    try:
        if dist.is_initialized():
            raise SimulationError("a process group is already initialised in this process; a sharded simulation "
                                  "needs its own (fake) one: run it in another process")
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
        try:
            yield init_device_mesh("cpu", (world_size,))
        finally:
            dist.destroy_process_group()
    finally:
        _GROUP_LOCK.release()


def unit_paths(parts: Any) -> list[str]:
    """Every vision encoder layer and decoder layer: FSDP2 units below the root, as the sanity step
    shards them (freezelab.step.shard)."""
    return [path for paths in parts.layers.values() for path in paths]


def shard(model: torch.nn.Module, parts: Any, mesh: Any, sharding: Sharding) -> None:
    """fully_shard each layer, then the root, on the meta device. ZeRO-2 keeps every unit gathered from its
    forward to its backward (reshard_after_forward=False); ZeRO-3 and FSDP reshard after forward."""
    from torch.distributed.fsdp import fully_shard

    after_forward = sharding != Sharding.ZERO2
    for path in unit_paths(parts):
        fully_shard(model.get_submodule(path), mesh=mesh, reshard_after_forward=after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=False if not after_forward else None)


def param_groups(model: torch.nn.Module) -> list[Any]:
    """FSDP2's parameter groups of `model`, root first."""
    from torch.distributed.fsdp import FSDPModule

    out = []
    for m in model.modules():
        if isinstance(m, FSDPModule):
            group = m._get_fsdp_state()._fsdp_param_group
            if group is not None:
                out.append(group)
    return out


def lazy_init(model: torch.nn.Module) -> None:
    """FSDP2's lazy init (normally at the first forward): shards re-padded, streams and states set up, so
    that the shards exist before the weights are booked."""
    model._get_fsdp_state()._lazy_init()


# -- booking what FSDP2 allocates ------------------------------------------------------------

def _booking_resize(st: torch.UntypedStorage, size: int) -> Any:
    assert _ORIGINAL_RESIZE is not None
    out = _ORIGINAL_RESIZE(st, size)
    for ledger in list(_LEDGERS):
        ledger.resized(st)
    return out


@contextlib.contextmanager
def resizes_booked(ledger: TensorLedger) -> Iterator[None]:
    """`UntypedStorage.resize_` books into `ledger` while the block runs (reference-counted, restored)."""
    global _ORIGINAL_RESIZE
    with _RESIZE_LOCK:
        if not _LEDGERS:
            _ORIGINAL_RESIZE = torch.UntypedStorage.resize_
            torch.UntypedStorage.resize_ = _booking_resize  # type: ignore[method-assign]
        _LEDGERS.append(ledger)
    try:
        yield
    finally:
        with _RESIZE_LOCK:
            _LEDGERS.remove(ledger)
            if not _LEDGERS and _ORIGINAL_RESIZE is not None:
                torch.UntypedStorage.resize_ = _ORIGINAL_RESIZE  # type: ignore[method-assign]
                _ORIGINAL_RESIZE = None


def _charged(ledger: TensorLedger, method: Callable[..., Any], cat: Category, comp: Label,
             before: Callable[[], None] | None = None) -> Callable[..., Any]:
    @functools.wraps(method)
    def inner(*args: Any, **kwargs: Any) -> Any:
        saved = ledger.category, ledger.component
        ledger.category, ledger.component = cat, comp
        if before is not None:
            before()
        try:
            return method(*args, **kwargs)
        finally:
            ledger.category, ledger.component = saved
    return inner


def _label_of(group: Any, labels: dict[str, Label]) -> Label:
    names = [p._param_fqn for p in group.fsdp_params]
    found = {labels.get(n, Label.OTHER) for n in names}
    return found.pop() if len(found) == 1 else Label.OTHER


def _to_host(ledger: TensorLedger, method: Callable[..., Any], group: Any) -> Callable[..., Any]:
    """After a post-backward, the unit's sharded gradients leave the GPU (CPUOffloadPolicy copies them to
    host memory and drops the GPU buffer)."""
    @functools.wraps(method)
    def inner(*args: Any, **kwargs: Any) -> Any:
        out = method(*args, **kwargs)
        for p in group.fsdp_params:
            if p.sharded_param.grad is not None:
                ledger.exclude(p.sharded_param.grad)
        return out
    return inner


def charge(ledger: TensorLedger, model: torch.nn.Module, labels: dict[str, Label], *, offload: bool) -> None:
    """Wrap each parameter group's methods (instance attributes) so that gathering books weights and
    reducing books gradients; the unsharded gradients autograd made are gradients too. `offload`
    (CPUOffloadPolicy): the shards and the sharded gradients are in host memory, not booked."""
    for group in param_groups(model):
        comp = _label_of(group, labels)

        def grads_are_gradients(g: Any = group) -> None:
            for p in g.fsdp_params:
                unsharded = getattr(p, "_unsharded_param", None)
                if unsharded is not None and unsharded.grad is not None:
                    ledger.classify(unsharded.grad, Category.GRADIENTS)

        for name in ("unshard", "wait_for_unshard", "pre_backward"):
            setattr(group, name, _charged(ledger, getattr(group, name), Category.WEIGHTS, comp))
        group.post_backward = _charged(ledger, group.post_backward, Category.GRADIENTS, comp, grads_are_gradients)
        if offload:
            group.post_backward = _to_host(ledger, group.post_backward, group)
            for p in group.fsdp_params:
                ledger.exclude(p._sharded_param_data)
