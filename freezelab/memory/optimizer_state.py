"""Optimizer state and optimizer-step temporaries, per trainable tensor.

Read from torch 2.13's torch/optim (adam.py / adamw.py, sgd.py, _adafactor.py)
and bitsandbytes' 8-bit optimizer:

* AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype (bf16 params:
  4 bytes per parameter, not 8), created lazily at the first step() for the
  parameters that got a gradient. Its default foreach implementation groups
  the tensors by device and dtype and allocates `_foreach_sqrt(exp_avg_sq)`
  for the whole group: a temporary as large as the trainable weights. The
  fused implementation updates in place and keeps each tensor's `step` on the
  device (an fp32 scalar: one 512-byte block each).
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
FUSED_STEP_BYTES = 4   # fused (and capturable) AdamW keeps `step` as an fp32 scalar on the device
BNB_BLOCK = 256
BNB_PAGED_MIN = 100_000   # get_state_buffer pages tensors with at least this many elements


@dataclass(frozen=True)
class Tensor:
    shape: tuple[int, ...]
    numel: int


def _adamw(t: Tensor, elem: int) -> list[int]:
    return [rounded(t.numel * elem)] * 2   # exp_avg, exp_avg_sq


def _adamw_8bit(t: Tensor, elem: int) -> list[int]:
    if t.numel < BNB_MIN_8BIT:
        return [rounded(t.numel * 4)] * 2
    blocks = math.ceil(t.numel / BNB_BLOCK)
    return [rounded(t.numel), rounded(t.numel), rounded(blocks * 4), rounded(blocks * 4)]


def _adafactor(t: Tensor, elem: int) -> list[int]:
    if len(t.shape) < 2:
        return [rounded(t.numel * elem)]
    rows = t.numel // t.shape[-1]
    cols = t.numel // t.shape[-2]
    return [rounded(rows * elem), rounded(cols * elem)]


def _adamw_fused(t: Tensor, elem: int) -> list[int]:
    return [rounded(FUSED_STEP_BYTES), *_adamw(t, elem)]   # its `step` lives on the GPU, made first


_STATE = {
    "adamw": _adamw,
    "adamw-fused": _adamw_fused,
    "sgd": lambda t, e: [],
    "sgd-momentum": lambda t, e: [rounded(t.numel * e)],
    "adamw-8bit": _adamw_8bit,
    "adafactor": _adafactor,
    "paged-adamw": lambda t, e: _paged_blocks(t, 4),
    "paged-adamw-8bit": lambda t, e: _paged_8bit_blocks(t),
}


def state_blocks(optimizer: str, t: Tensor, elem: int) -> list[int]:
    """The state tensors one trainable tensor gets at the first step(), in the order they are made."""
    return _STATE[optimizer](t, elem)


def _paged(t: Tensor, moment_elem: int) -> tuple[int, int]:
    """(bytes in the allocator, bytes in unified memory) of one paged optimizer's moments."""
    moments = 2 * (t.numel * moment_elem)
    if t.numel >= BNB_PAGED_MIN:
        return 0, moments
    return 2 * rounded(t.numel * moment_elem), 0


def _paged_blocks(t: Tensor, moment_elem: int) -> list[int]:
    """A paged optimizer's two moments in the allocator (small tensors only, see `_paged`)."""
    return [rounded(t.numel * moment_elem)] * 2 if _paged(t, moment_elem)[0] else []


def _paged_8bit_blocks(t: Tensor) -> list[int]:
    if t.numel < BNB_MIN_8BIT:
        return [rounded(t.numel * 4)] * 2
    blocks = math.ceil(t.numel / BNB_BLOCK)
    return [*_paged_blocks(t, 1), rounded(blocks * 4), rounded(blocks * 4)]


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
    return sum(sum(state_blocks(optimizer, t, elem)) for t in tensors)


def step_temp_blocks(optimizer: str, tensors: Iterable[Tensor], elem: int) -> tuple[list[int], bool]:
    """The temporaries of optimizer.step(), and whether they come one after the other (True) or are
    all alive at once (False)."""
    tensors = list(tensors)
    if optimizer == "adamw":
        # foreach: exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs) for the whole (device, dtype) group
        return [rounded(t.numel * elem) for t in tensors], False
    if optimizer == "adafactor":
        # single-tensor: one var_estimate (row @ col) or, for a vector, grad*grad plus a clone
        return [rounded(t.numel * elem) * (1 if len(t.shape) >= 2 else 2) for t in tensors], True
    return [], False


def step_temp_bytes(optimizer: str, tensors: Iterable[Tensor], elem: int) -> int:
    """Peak temporary memory of optimizer.step() on top of weights, gradients and state."""
    blocks, serial = step_temp_blocks(optimizer, tensors, elem)
    return max(blocks, default=0) if serial else sum(blocks)


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
