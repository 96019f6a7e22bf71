"""The optimizer of a simulated step, as it runs on a GPU, and its state in the ledger."""

from __future__ import annotations

import torch

from freezelab.memory.fake.ledger import Label, TensorLedger
from freezelab.memory.result import Category
from freezelab.optimizers import make_optimizer

LR = 1e-5  # measure.py's learning rate (memory does not depend on it)


class AdamW8bitLike(torch.optim.Optimizer):
    """Memory stand-in for bitsandbytes' AdamW8bit (not installed here).

    Per parameter with at least 4096 elements (bnb's `min_8bit_size`): two uint8
    moments (1 byte each per element) plus an fp32 absmax per 256-element block;
    smaller parameters keep fp32 moments, as bnb does. The update is one fused
    in-place kernel, so the step allocates no temporaries; `step` is a host int.
    """

    def __init__(self, params, lr: float = LR) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    _adamw8bit_state(self.state[p], p)
        return None


def _adamw8bit_state(st: dict, p: torch.Tensor) -> None:
    if not st:
        st["step"] = 0
        if p.numel() >= 4096:
            blocks = -(-p.numel() // 256)
            st["state1"] = torch.zeros_like(p, dtype=torch.uint8)
            st["state2"] = torch.zeros_like(p, dtype=torch.uint8)
            st["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
            st["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        else:
            st["state1"] = torch.zeros_like(p, dtype=torch.float32)
            st["state2"] = torch.zeros_like(p, dtype=torch.float32)
    st["step"] += 1


class PagedAdamWLike(torch.optim.Optimizer):
    """Memory stand-in for bitsandbytes' PagedAdamW / PagedAdamW8bit (not installed here): the moments of
    AdamW (fp32) or AdamW8bit, those of tensors with at least 100,000 elements in CUDA unified memory
    (`get_paged`), which `book_state` leaves out of the ledger as the caching allocator never sees them."""

    def __init__(self, params, lr: float = LR, bits: int = 32) -> None:
        super().__init__(params, {"lr": lr})
        self.bits = bits
        self.paged: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not self.state[p]:
                    self._init(self.state[p], p)
        return None

    def _init(self, st: dict, p: torch.Tensor) -> None:
        if self.bits == 8 and p.numel() >= 4096:
            _adamw8bit_state(st, p)
        else:
            st["state1"] = torch.zeros_like(p, dtype=torch.float32)
            st["state2"] = torch.zeros_like(p, dtype=torch.float32)
        if p.numel() >= PAGED_MIN:
            self.paged += [st["state1"], st["state2"]]


PAGED_MIN = 100_000  # bitsandbytes' get_state_buffer pages tensors with at least this many elements


def optimizer_for(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
    """The workload's optimizer over the trainable parameters, as it runs on CUDA."""
    if name == "adamw-8bit":  # bitsandbytes' state layout, emulated (it needs CUDA)
        return AdamW8bitLike(params, lr=LR) if params else None
    if name in ("paged-adamw", "paged-adamw-8bit"):
        return PagedAdamWLike(params, lr=LR, bits=8 if name.endswith("8bit") else 32) if params else None
    # On CUDA the default resolves to foreach=True; on fake tensors it would not (FakeTensor
    # is not a plain Tensor type), so say it explicitly.
    return make_optimizer(name, params, LR, foreach=True)


def book_state(ledger: TensorLedger, opt: torch.optim.Optimizer) -> None:
    """Label the optimizer's state tensors; AdamW/Adafactor keep `step` on the host unless fused
    or capturable."""
    host_step = not getattr(opt, "defaults", {}).get("fused") and not opt.defaults.get("capturable")
    paged = {id(t) for t in getattr(opt, "paged", ())}
    for st in opt.state.values():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                continue
            if (k == "step" and host_step) or id(v) in paged:
                ledger.exclude(v)
            else:
                ledger.classify(v, Category.OPTIMIZER_STATE, Label.OPTIMIZER)
