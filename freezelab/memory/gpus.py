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

Each card also has its compute figures (`Throughput`), for the step time
(`freezelab.compute.timing`): dense peak FLOP/s per math mode (tensor-core
bf16 / fp16 and tf32, plain fp32; NVIDIA quotes tensor-core figures "with
sparsity", twice the dense ones), memory bandwidth and the per-direction
bandwidth of its links to the other GPUs of a node, each from the vendor's
datasheet or architecture whitepaper named in `source`. The A100, H100 and
H200 are the SXM (NVLink) parts, whose memory sizes these are.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from freezelab.errors import FreezelabError
from freezelab.memory.cuda_facts import MEASURED_ARCH, Arch, cublas_workspace
from freezelab.memory.result import MemoryEstimate
from freezelab.units import GiB, MiB

MAX_GPU_GIB = 4096.0


class Math(StrEnum):
    """How a step's matmuls run: on tensor cores in bf16 / fp16 / tf32, or in plain fp32."""

    BF16 = "bf16"
    FP16 = "fp16"
    TF32 = "tf32"
    FP32 = "fp32"


class Link(StrEnum):
    """What connects the GPUs of one node."""

    NVLINK = "nvlink"
    PCIE = "pcie"


@dataclass(frozen=True)
class Throughput:
    """Dense peak compute (TFLOP/s per math mode), memory bandwidth and links (GB/s, 10^9 bytes)."""

    tflops: dict[Math, float]
    memory_gbs: float
    pcie_gbs: float              # one direction of its PCIe slot
    nvlink_gbs: float | None     # one direction of its NVLink (None: no NVLink between all GPUs)
    source: str

    def link_gbs(self, link: Link) -> float:
        """One direction of `link` (a card without NVLink talks over PCIe)."""
        return self.nvlink_gbs if link == Link.NVLINK and self.nvlink_gbs else self.pcie_gbs

    @property
    def default_link(self) -> Link:
        return Link.NVLINK if self.nvlink_gbs else Link.PCIE


def _peaks(bf16: float, tf32: float, fp32: float) -> dict[Math, float]:
    return {Math.BF16: bf16, Math.FP16: bf16, Math.TF32: tf32, Math.FP32: fp32}


_A100 = ("NVIDIA A100 Tensor Core GPU datasheet (SXM): FP32 19.5, TF32 156, BF16 / FP16 312 TFLOPS "
         "dense; NVLink 600 GB/s, PCIe Gen4 64 GB/s (both directions together)")
_HOPPER = ("NVIDIA {} Tensor Core GPU datasheet (SXM): FP32 67, TF32 989 and BF16 / FP16 1,979 TFLOPS "
           "with sparsity (494.7 / 989.4 dense); {} TB/s; NVLink 900 GB/s, PCIe Gen5 128 GB/s")
_ADA = "NVIDIA Ada GPU Architecture whitepaper, appendix A"


@dataclass(frozen=True)
class Gpu:
    name: str
    nominal_gb: int          # what the card is sold as
    total_mib: int           # what nvidia-smi reports as total
    arch: Arch
    measured: bool = False   # estimates checked against steps measured on this card; else assumed
    compute: Throughput | None = None

    @property
    def total_bytes(self) -> int:
        return self.total_mib * MiB


GPUS: tuple[Gpu, ...] = (
    Gpu("RTX 4090 24 GB", 24, 24564, Arch.SM89, compute=Throughput(
        _peaks(165.2, 82.6, 82.6), 1008, 32, None,
        f"{_ADA} (GeForce RTX 4090): FP16 / BF16 tensor with FP32 accumulate 165.2, TF32 82.6, FP32 82.6 "
        "TFLOPS dense; 1,008 GB/s; PCIe Gen4 x16, no NVLink")),
    Gpu("A100 40 GB", 40, 40960, Arch.SM80, compute=Throughput(
        _peaks(312, 156, 19.5), 1555, 32, 300, f"{_A100}; 40 GB: 1,555 GB/s")),
    Gpu("L40S 48 GB", 48, 46068, Arch.SM89, compute=Throughput(
        _peaks(362.05, 183, 91.6), 864, 32, None,
        "NVIDIA L40S datasheet: BF16 / FP16 tensor 362.05, TF32 183 TFLOPS dense (733 / 366 with sparsity), "
        "FP32 91.6; 864 GB/s; PCIe Gen4 x16 64 GB/s, no NVLink")),
    Gpu("RTX A6000 48 GB", 48, 49140, Arch.SM86, compute=Throughput(
        _peaks(154.8, 77.4, 38.7), 768, 32, None,
        "NVIDIA Ampere GA102 GPU Architecture whitepaper, appendix A (RTX A6000): FP16 / BF16 tensor with "
        "FP32 accumulate 154.8, TF32 77.4 TFLOPS dense, FP32 38.7; 768 GB/s; PCIe Gen4 x16 (its NVLink "
        "bridge joins pairs only)")),
    Gpu("A100 80 GB", 80, 81920, Arch.SM80, compute=Throughput(
        _peaks(312, 156, 19.5), 2039, 32, 300, f"{_A100}; 80 GB SXM: 2,039 GB/s")),
    Gpu("H100 80 GB", 80, 81559, Arch.SM90, measured=True, compute=Throughput(
        _peaks(989.4, 494.7, 67), 3350, 64, 450, _HOPPER.format("H100", "3.35"))),
    Gpu("H200 141 GB", 141, 143771, Arch.SM90, measured=True, compute=Throughput(
        _peaks(989.4, 494.7, 67), 4800, 64, 450, _HOPPER.format("H200", "4.8"))),
)


class GpuMemoryError(FreezelabError):
    """A --gpu-memory value that is not a usable size."""


def find_gpu(device_name: str) -> Gpu | None:
    """The card of the list a device name (as torch.cuda.get_device_name says it, "NVIDIA H100 80GB
    HBM3") or a list name names; None when it is none of them, or another variant of one (a PCIe or
    NVL part of an SXM card, whose peaks differ) or when the memory size is needed and missing."""
    if any(g.name == device_name for g in GPUS):
        return next(g for g in GPUS if g.name == device_name)
    flat = device_name.upper().replace(" ", "").replace("-", "")
    found = [g for g in GPUS if _model(g) in flat]
    if len(found) > 1:
        found = [g for g in found if f"{g.nominal_gb}G" in flat]
    if len(found) != 1 or (found[0].compute and found[0].compute.nvlink_gbs and ("PCIE" in flat or "NVL" in flat)):
        return None
    return found[0]


def _model(g: Gpu) -> str:
    """"A100 40 GB" -> "A100"."""
    return g.name.rsplit(" ", 2)[0].upper().replace(" ", "")


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
