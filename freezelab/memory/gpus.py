"""Common training GPUs and whether an estimate fits on them.

Memory is each card's total as nvidia-smi reports it (MiB), the same scale as
the estimate's `device_estimate_bytes` (tensors + allocator cache + CUDA
context), so "fits" means the step would run without an out-of-memory error
if nothing else shares the card.

The estimate is made for sm90, the architecture the calibration measured
(`cuda_facts`). Each card is compared against its own figure: on another
architecture PyTorch's default cuBLAS workspace is smaller, so the workspaces
alive at the peak are swapped for that architecture's size. Only the H100 and
the H200 (sm90) were measured; on the others the CUDA context and the
allocator cache are assumed to be as on the H100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freezelab.errors import FreezelabError
from freezelab.memory.cuda_facts import MEASURED_ARCH, Arch, cublas_workspace
from freezelab.memory.result import MemoryEstimate
from freezelab.units import GiB, MiB

MAX_GPU_GIB = 4096.0


@dataclass(frozen=True)
class Gpu:
    name: str
    nominal_gb: int          # what the card is sold as
    total_mib: int           # what nvidia-smi reports as total
    arch: Arch
    measured: bool = False   # estimates checked against steps measured on this card; else assumed

    @property
    def total_bytes(self) -> int:
        return self.total_mib * MiB


GPUS: tuple[Gpu, ...] = (
    Gpu("RTX 4090 24 GB", 24, 24564, Arch.SM89),
    Gpu("A100 40 GB", 40, 40960, Arch.SM80),
    Gpu("L40S 48 GB", 48, 46068, Arch.SM89),
    Gpu("RTX A6000 48 GB", 48, 49140, Arch.SM86),
    Gpu("A100 80 GB", 80, 81920, Arch.SM80),
    Gpu("H100 80 GB", 80, 81559, Arch.SM90, measured=True),
    Gpu("H200 141 GB", 141, 143771, Arch.SM90, measured=True),
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
    return int(gib * GiB)


def device_bytes_on(est: MemoryEstimate, arch: Arch) -> int:
    """The estimate's device figure on a card of architecture `arch`: the cuBLAS workspaces alive
    at the peak take that architecture's default size instead of the measured one."""
    return device_bytes_for(est.device_estimate_bytes, est.cublas_workspaces, arch)


def device_bytes_for(device_bytes: int, cublas_workspaces: int, arch: Arch) -> int:
    """A device figure made for the measured architecture, on a card of architecture `arch`."""
    return device_bytes - cublas_workspaces * (cublas_workspace(MEASURED_ARCH) - cublas_workspace(arch))


def fits_table(est: MemoryEstimate) -> list[dict[str, Any]]:
    """Each common GPU with its own device figure, whether it fits and what is left
    (negative: missing)."""
    rows = []
    for g in GPUS:
        need = device_bytes_on(est, g.arch)
        rows.append({"gpu": g.name, "memory_bytes": g.total_bytes, "fits": need <= g.total_bytes,
                     "headroom_bytes": g.total_bytes - need, "architecture": str(g.arch),
                     "device_estimate_bytes": need, "measured": g.measured})
    return rows


def fits_custom(device_bytes: int, gpu_bytes: int) -> dict[str, Any]:
    return {"gpu": f"{gpu_bytes / GiB:g} GiB", "memory_bytes": gpu_bytes, "fits": device_bytes <= gpu_bytes,
            "headroom_bytes": gpu_bytes - device_bytes}
