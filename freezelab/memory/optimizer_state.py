"""Optimizer state and optimizer-step temporaries, per trainable tensor.

Read from torch 2.13's torch/optim (adam.py / adamw.py, sgd.py, _adafactor.py)
and bitsandbytes' 8-bit optimizer:

* AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype (bf16 params:
  4 bytes per parameter, not 8), created lazily at the first step() for the
  parameters that got a gradient. Its default foreach implementation groups
  the tensors by device and dtype and allocates `_foreach_sqrt(exp_avg_sq)`
  for the whole group: a temporary as large as the trainable weights. The
  fused implementation updates in place.
* SGD keeps nothing; with momentum one buffer per parameter; both update in
  place (no weight decay by default).
* bitsandbytes AdamW8bit: one byte per element for each moment plus an fp32
  absmax per block of 256 elements; tensors under 4,096 elements keep 32-bit
  moments; its kernels update in place.
* torch.optim.Adafactor factors the second moment of every tensor with two or
  more dimensions into a row and a column vector (vectors keep a full one);
  its default (single-tensor) step materialises one tensor's `row @ col`
  estimate at a time.
* bitsandbytes' paged AdamW (32-bit: fp32 moments; 8-bit: as AdamW8bit) puts the
  moments of every tensor of at least 100,000 elements in CUDA unified memory
  (`get_paged`, cudaMallocManaged), outside PyTorch's caching allocator: they are
  not in `max_memory_allocated`, and the driver pages them to CPU RAM when the GPU
  runs short. Smaller tensors' moments and every absmax stay in the allocator
  (bitsandbytes 0.49 `Optimizer8bit.get_state_buffer`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from freezelab.memory.cuda_facts import rounded

BNB_MIN_8BIT = 4096
BNB_BLOCK = 256
BNB_PAGED_MIN = 100_000   # get_state_buffer pages tensors with at least this many elements


@dataclass(frozen=True)
class Tensor:
    shape: tuple[int, ...]
    numel: int


def _adamw(t: Tensor, elem: int) -> int:
    return 2 * rounded(t.numel * elem)


def _adamw_8bit(t: Tensor, elem: int) -> int:
    if t.numel < BNB_MIN_8BIT:
        return 2 * rounded(t.numel * 4)
    blocks = math.ceil(t.numel / BNB_BLOCK)
    return 2 * (rounded(t.numel) + rounded(blocks * 4))


def _adafactor(t: Tensor, elem: int) -> int:
    if len(t.shape) < 2:
        return rounded(t.numel * elem)
    rows = t.numel // t.shape[-1]
    cols = t.numel // t.shape[-2]
    return rounded(rows * elem) + rounded(cols * elem)


def _paged(t: Tensor, moment_elem: int) -> tuple[int, int]:
    """(bytes in the allocator, bytes in unified memory) of one paged optimizer's moments."""
    moments = 2 * (t.numel * moment_elem)
    if t.numel >= BNB_PAGED_MIN:
        return 0, moments
    return 2 * rounded(t.numel * moment_elem), 0


def _paged_adamw(t: Tensor, elem: int) -> int:
    return _paged(t, 4)[0]


def _paged_adamw_8bit(t: Tensor, elem: int) -> int:
    if t.numel < BNB_MIN_8BIT:
        return 2 * rounded(t.numel * 4)
    blocks = math.ceil(t.numel / BNB_BLOCK)
    return _paged(t, 1)[0] + 2 * rounded(blocks * 4)


def paged_bytes(optimizer: str, tensors: Iterable[Tensor]) -> int:
    """Optimizer state a paged optimizer keeps in unified memory, outside the allocator."""
    if optimizer == "paged-adamw":
        return sum(_paged(t, 4)[1] for t in tensors)
    if optimizer == "paged-adamw-8bit":
        return sum(_paged(t, 1)[1] for t in tensors if t.numel >= BNB_MIN_8BIT)
    return 0


def state_bytes(optimizer: str, tensors: Iterable[Tensor], elem: int) -> int:
    """Optimizer state (steady state: after the first step) for the tensors that get gradients, in the
    caching allocator (a paged optimizer's unified memory: `paged_bytes`)."""
    per = {
        "paged-adamw": _paged_adamw,
        "paged-adamw-8bit": _paged_adamw_8bit,
        "adamw": _adamw,
        "adamw-fused": _adamw,
        "sgd": lambda t, e: 0,
        "sgd-momentum": lambda t, e: rounded(t.numel * e),
        "adamw-8bit": _adamw_8bit,
        "adafactor": _adafactor,
    }[optimizer]
    return sum(per(t, elem) for t in tensors)


def step_temp_bytes(optimizer: str, tensors: Iterable[Tensor], elem: int) -> int:
    """Peak temporary memory of optimizer.step() on top of weights, gradients and state."""
    tensors = list(tensors)
    if optimizer == "adamw":
        # foreach: exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs) for the whole (device, dtype) group
        return sum(rounded(t.numel * elem) for t in tensors)
    if optimizer == "adafactor":
        # single-tensor: one var_estimate (row @ col) or, for a vector, grad*grad plus a clone
        return max((rounded(t.numel * elem) * (1 if len(t.shape) >= 2 else 2) for t in tensors), default=0)
    return 0


def state_label(optimizer: str, elem: int) -> str:
    """A short phrase for notes: what the state costs per trainable parameter."""
    return {
        "adamw": f"AdamW keeps two moments in the parameter dtype ({2 * elem} bytes per trainable parameter)",
        "adamw-fused": f"fused AdamW keeps two moments in the parameter dtype ({2 * elem} bytes per trainable "
                       "parameter) and updates in place",
        "sgd": "plain SGD keeps no state",
        "sgd-momentum": f"SGD with momentum keeps one buffer ({elem} bytes per trainable parameter)",
        "adamw-8bit": "8-bit AdamW keeps two 1-byte moments plus a 4-byte scale per 256 values "
                      "(about 2 bytes per trainable parameter)",
        "adafactor": "Adafactor keeps only a row and a column vector per weight matrix",
        "paged-adamw": "paged AdamW keeps fp32 moments (8 bytes per trainable parameter), those of large tensors in "
                       "CUDA unified memory outside the allocator",
        "paged-adamw-8bit": "paged 8-bit AdamW keeps 1-byte moments plus a 4-byte scale per 256 values, those of "
                            "large tensors in CUDA unified memory outside the allocator",
    }[optimizer]
