"""The result of a memory estimate, shared by the analytic and the simulated method: the
estimate itself and the names its numbers are keyed by."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Category(StrEnum):
    """What the tensor memory at the peak of a steady-state training step is for."""

    WEIGHTS = "weights"                   # parameters and buffers
    GRADIENTS = "gradients"               # .grad of trainable parameters
    OPTIMIZER_STATE = "optimizer_state"   # e.g. AdamW exp_avg / exp_avg_sq
    OPTIMIZER_TEMP = "optimizer_temp"     # temporaries of optimizer.step() (foreach buffers)
    ACTIVATIONS = "activations"           # saved for backward, plus live forward/backward temporaries
    LOGITS_LOSS = "logits_loss"           # logits, their fp32 upcast and the loss' saved tensors
    WORKSPACE = "workspace"               # cuBLAS workspaces and other library scratch


CATEGORIES: tuple[Category, ...] = tuple(Category)


class Phase(StrEnum):
    """Where in the training step something happens. An estimate's peak is in one of
    STEP_PHASES; the simulator's clock also knows the time before and between steps."""

    SETUP = "setup"          # building the model, the batch and the optimizer
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"  # optimizer.step() and zero_grad()
    IDLE = "idle"            # after a step, before the next


STEP_PHASES: tuple[Phase, ...] = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER)


class Method(StrEnum):
    ANALYTIC = "analytic"    # freezelab.memory.analytic: from the model index, milliseconds
    SIMULATE = "simulate"    # freezelab.memory.simulate: the real step on fake tensors


@dataclass
class MemoryEstimate:
    method: Method
    peak_bytes: int                  # tensor bytes at the peak (== torch.cuda.max_memory_allocated)
    breakdown: dict[Category, int]   # bytes per category at the peak
    phase: Phase                     # where the peak happens: one of STEP_PHASES
    device_estimate_bytes: int       # peak_bytes plus allocator cache and CUDA context (nvidia-smi), on sm90
    activations_by_component: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)   # plain sentences: why the numbers are what they are
    details: dict[str, Any] = field(default_factory=dict)
    cublas_workspaces: int = 0       # cuBLAS workspaces alive at the peak (their size depends on the GPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fits(self, gpu_bytes: int) -> bool:
        """Whether the device estimate fits in a card of `gpu_bytes` total memory."""
        return self.device_estimate_bytes <= gpu_bytes
