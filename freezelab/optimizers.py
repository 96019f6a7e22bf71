"""The optimizers a workload names, built over the trainable parameters."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from freezelab.errors import FreezelabError
from freezelab.workload import Optimizer

if TYPE_CHECKING:
    import torch


# the bitsandbytes optimizer class of each choice that needs bitsandbytes (and CUDA)
BITSANDBYTES = {Optimizer.ADAMW_8BIT: "AdamW8bit", Optimizer.PAGED_ADAMW: "PagedAdamW",
                Optimizer.PAGED_ADAMW_8BIT: "PagedAdamW8bit"}


class OptimizerError(FreezelabError):
    """The workload's optimizer cannot be built here."""


def check_available(name: Optimizer, device: str) -> None:
    """Refuse early (before any model is built) when the optimizer cannot run here."""
    if name in BITSANDBYTES:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise OptimizerError(f"{name} needs the bitsandbytes package (pip install bitsandbytes); "
                                 "use adamw or adamw-fused instead")
        if not device.startswith("cuda"):
            raise OptimizerError(f"{name} (bitsandbytes) runs on CUDA only; use --device cuda or another optimizer")


def make_optimizer(name: Optimizer, params: list[torch.nn.Parameter], lr: float, *,
                   foreach: bool | None = None) -> torch.optim.Optimizer | None:
    """The optimizer `name` names, over `params`; None when nothing trains.

    adamw is torch's default implementation (foreach on CUDA), as in the calibration protocol;
    `foreach` pins AdamW's and SGD's choice (Adafactor stays single-tensor, its CUDA default)."""
    import torch

    if not params:
        return None
    if name == Optimizer.ADAMW:
        return torch.optim.AdamW(params, lr=lr, foreach=foreach)
    if name == Optimizer.ADAMW_FUSED:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    if name == Optimizer.SGD:
        return torch.optim.SGD(params, lr=lr, foreach=foreach)
    if name == Optimizer.SGD_MOMENTUM:
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=foreach)
    if name == Optimizer.ADAFACTOR:
        return torch.optim.Adafactor(params, lr=lr)
    if name in BITSANDBYTES:
        check_available(name, str(params[0].device))
        import bitsandbytes

        return getattr(bitsandbytes.optim, BITSANDBYTES[name])(params, lr=lr)
    raise OptimizerError(f"unknown optimizer {name!r}")
