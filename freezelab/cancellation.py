"""Stopping a sanity step or a simulation that another thread asked to stop.

A run is given a cancel flag (a `threading.Event`, or a callable that says whether to stop) and
checks it where it can stop cleanly: between its phases, and inside the model's forward and
backward, where one step of a long sequence spends all its time. `watch_modules` installs that
check on a torch model: a forward pre-hook on every module (the forward stops before the next
module runs) and, on the outputs of every module with parameters of its own, a gradient hook (the
backward stops when its gradient reaches the next such module). The check raises `Cancelled`; the
caller catches it where it can release what the run allocated.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from freezelab.errors import Cancelled

if TYPE_CHECKING:
    import torch

__all__ = ["CancelFlag", "Cancelled", "checker", "is_set", "watch_modules"]

CancelFlag = threading.Event | Callable[[], bool] | None


def is_set(flag: CancelFlag) -> bool:
    """Whether `flag` asks the run to stop (None never does)."""
    if flag is None:
        return False
    return bool(flag.is_set() if isinstance(flag, threading.Event) else flag())


def checker(flag: CancelFlag, where: Callable[[], str]) -> Callable[[], None]:
    """A function that raises Cancelled (saying `where()` the run was) once `flag` is set."""
    def check() -> None:
        if is_set(flag):
            raise Cancelled(f"cancelled during {where()}")
    return check


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif hasattr(obj, "to_tuple"):  # transformers' ModelOutput
        yield from _tensors(obj.to_tuple())


@contextlib.contextmanager
def watch_modules(model: torch.nn.Module, check: Callable[[], None]) -> Iterator[None]:
    """Run `check()` before every module's forward, and in the backward whenever the gradient of a
    module's output arrives (modules with parameters of their own: Linear, norms, embeddings). The
    hooks hold no tensor and are removed on exit, however the block ends."""
    def before(module: torch.nn.Module, args: Any) -> None:
        check()

    def grad_check(grad: torch.Tensor) -> None:
        check()

    def after(module: torch.nn.Module, args: Any, output: Any) -> None:
        for t in _tensors(output):
            if t.requires_grad:
                t.register_hook(grad_check)

    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(before))
            if next(m.parameters(recurse=False), None) is not None:
                handles.append(m.register_forward_hook(after))
        yield
    finally:
        for h in handles:
            h.remove()
