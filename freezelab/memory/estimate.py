"""The result of a memory estimate, shared by the analytic and the simulated method."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Categories of tensor memory at the peak of a steady-state training step.
CATEGORIES = (
    "weights",         # parameters and buffers
    "gradients",       # .grad of trainable parameters
    "optimizer_state", # e.g. AdamW exp_avg / exp_avg_sq
    "optimizer_temp",  # temporaries of optimizer.step() (foreach buffers)
    "activations",     # saved for backward, plus live forward/backward temporaries
    "logits_loss",     # logits, their fp32 upcast and the loss' saved tensors
    "workspace",       # cuBLAS workspaces and other library scratch
)

GiB = 2**30


@dataclass
class MemoryEstimate:
    method: str                      # "analytic" or "simulate"
    peak_bytes: int                  # tensor bytes at the peak (== torch.cuda.max_memory_allocated)
    breakdown: dict[str, int]        # bytes per CATEGORIES entry at the peak
    phase: str                       # where the peak happens: "forward", "backward", "optimizer"
    device_estimate_bytes: int       # peak_bytes plus allocator cache and CUDA context (nvidia-smi)
    activations_by_component: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)   # plain sentences: why the numbers are what they are
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fits(self, gpu_bytes: int) -> bool:
        """Whether the device estimate fits in a card of `gpu_bytes` total memory."""
        return self.device_estimate_bytes <= gpu_bytes
