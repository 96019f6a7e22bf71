"""Facts of the CUDA software stack that both estimators rely on, each with its source.

Two kinds of fact live here:

* read from the source of PyTorch (the caching allocator, the cuBLAS handle
  pool): they hold on every card of the architecture named;
* measured on the calibration GPU, an H100 80GB (sm90) with CUDA 13 and
  PyTorch 2.11 (shared/calibration/measured-h100.jsonl, 11 rows), and seen
  again on an H200 (sm90, tests/data/validation-h200.jsonl). On other
  cards they are assumptions; `freezelab.memory.gpus` says per card which.

Pure Python: the analytic estimator imports this without torch.
"""

from __future__ import annotations

from enum import StrEnum

from freezelab.units import KiB, MiB


class Arch(StrEnum):
    """A GPU architecture (CUDA compute capability)."""

    SM80 = "sm80"   # A100
    SM86 = "sm86"   # RTX A6000
    SM89 = "sm89"   # RTX 4090, L40S
    SM90 = "sm90"   # H100, H200


MEASURED_ARCH = Arch.SM90   # the architecture every measured fact below comes from

# -- the caching allocator: c10/cuda/CUDACachingAllocator.cpp (PyTorch 2.11 / 2.13) ---------------
BLOCK = 512                  # kMinBlockSize: every block is a multiple of 512 bytes
SMALL_SIZE = 1 * MiB         # kSmallSize: requests up to this come from the small pool
SMALL_BUFFER = 2 * MiB       # kSmallBuffer: segment size of the small pool
LARGE_BUFFER = 20 * MiB      # kLargeBuffer: segment size for large requests under kMinLargeAlloc
MIN_LARGE_ALLOC = 10 * MiB   # kMinLargeAlloc
ROUND_LARGE = 2 * MiB        # kRoundLarge: larger requests get a segment rounded up to this


def rounded(nbytes: int) -> int:
    """Bytes the caching allocator books for a request of `nbytes` (0 for an empty tensor)."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // BLOCK) * BLOCK


# -- cuBLAS workspaces: aten/src/ATen/cuda/CublasHandlePool.cpp, parseChosenWorkspaceSize ---------
# The default CUBLAS_WORKSPACE_CONFIG is ":4096:8" on sm90 (4096 KiB x 8 = 32 MiB) and
# ":4096:2:16:8" on every other architecture (4096 KiB x 2 + 16 KiB x 8 = 8 MiB + 128 KiB). The
# workspace comes from the caching allocator, once per (cuBLAS handle, stream); handles are per
# thread, and autograd runs CUDA backward ops on its own device thread, so a training step holds
# two. The sm90 size is confirmed by the H100 calibration rows; the others are read, not measured.
CUBLAS_WORKSPACE: dict[Arch, int] = {
    Arch.SM80: 4096 * KiB * 2 + 16 * KiB * 8,
    Arch.SM86: 4096 * KiB * 2 + 16 * KiB * 8,
    Arch.SM89: 4096 * KiB * 2 + 16 * KiB * 8,
    Arch.SM90: 4096 * KiB * 8,
}
# cuBLASLt (addmm with a bias epilogue) has its own workspace per (handle, stream): the default
# CUBLASLT_WORKSPACE_SIZE of 1024 KiB (aten/src/ATen/cuda/CUDABlas.cpp); confirmed on the H100.
CUBLASLT_WORKSPACE = 1024 * KiB


def cublas_workspace(arch: Arch) -> int:
    """The default cuBLAS workspace of one (handle, stream) on `arch`."""
    return CUBLAS_WORKSPACE[Arch(arch)]


# -- measured on the H100 (sm90, CUDA 13, PyTorch 2.11) --------------------------------------------
# What the process holds besides tensors: in every calibration row `device_used_bytes -
# peak_reserved_bytes` is 767-771 MiB, the CUDA context plus the cuBLAS / cuDNN / flash kernels
# loaded into it, whatever the model. Assumed the same on other cards.
CUDA_CONTEXT = 768 * MiB
# Freed blocks the allocator keeps (`peak_reserved - peak_allocated`) are not a fixed fraction: 0.8% to
# 23% of the peak over the measured rows. Both estimators replay the caching allocator for them
# (`caching_allocator`).
