"""Common training GPUs and whether an estimate fits on them.

Memory is each card's total as nvidia-smi reports it (MiB), the same scale as
the estimate's `device_estimate_bytes` (tensors + allocator cache + CUDA
context), so "fits" means the step would run without an out-of-memory error
if nothing else shares the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freezelab.errors import FreezelabError

MiB = 2**20
GB = 10**9
MAX_GPU_GIB = 4096.0


@dataclass(frozen=True)
class Gpu:
    name: str
    nominal_gb: int          # what the card is sold as
    total_mib: int           # what nvidia-smi reports as total

    @property
    def total_bytes(self) -> int:
        return self.total_mib * MiB


GPUS: tuple[Gpu, ...] = (
    Gpu("RTX 4090 24 GB", 24, 24564),
    Gpu("A100 40 GB", 40, 40960),
    Gpu("L40S 48 GB", 48, 46068),
    Gpu("RTX A6000 48 GB", 48, 49140),
    Gpu("A100 80 GB", 80, 81920),
    Gpu("H100 80 GB", 80, 81559),
    Gpu("H200 141 GB", 141, 143771),
)


class GpuMemoryError(FreezelabError):
    """A --gpu-memory value that is not a usable size."""


def parse_gib(value: Any) -> int:
    """A user's GPU memory in GiB (e.g. "24" or 79.6) as bytes."""
    try:
        gib = float(value)
    except (TypeError, ValueError):
        raise GpuMemoryError(f"GPU memory must be a number of GiB, got {value!r}") from None
    if not 0 < gib <= MAX_GPU_GIB or gib != gib:
        raise GpuMemoryError(f"GPU memory must be between 0 and {MAX_GPU_GIB:g} GiB, got {value!r}")
    return int(gib * 2**30)


def fits_table(device_bytes: int) -> list[dict[str, Any]]:
    """Each common GPU with whether `device_bytes` fits and what is left (negative: missing)."""
    return [{"gpu": g.name, "memory_bytes": g.total_bytes, "fits": device_bytes <= g.total_bytes,
             "headroom_bytes": g.total_bytes - device_bytes} for g in GPUS]


def fits_custom(device_bytes: int, gpu_bytes: int) -> dict[str, Any]:
    return {"gpu": f"{gpu_bytes / 2**30:g} GiB", "memory_bytes": gpu_bytes, "fits": device_bytes <= gpu_bytes,
            "headroom_bytes": gpu_bytes - device_bytes}


def smallest_fitting(device_bytes: int) -> Gpu | None:
    fitting = [g for g in GPUS if device_bytes <= g.total_bytes]
    return min(fitting, key=lambda g: g.total_mib) if fitting else None
