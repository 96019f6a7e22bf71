"""Scaled dot-product attention as the CUDA composite runs it on an H100 (sm90).

On fake CPU tensors the CPU composite would run the math kernel, which saves
the attention matrix for backward; on the GPU the same call runs
FlashAttention-2 or the memory-efficient kernel, which save the output and a
logsumexp. `cuda_sdpa` makes the backend choice of `select_sdp_backend` and
calls the same ATen ops the CUDA composite calls, so autograd saves what it
saves on a GPU. `KERNEL_SCRATCH` gives the scratch that the fused backward
kernels, and the math kernel's `_safe_softmax` composite, allocate through the
caching allocator and free before returning (the fake kernels return only the
outputs).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any

import torch

from freezelab.memory.cuda_facts import rounded
from freezelab.memory.result import Category

aten = torch.ops.aten
HALF = (torch.float16, torch.bfloat16)


class Backend(StrEnum):
    FLASH = "flash"            # FlashAttention-2
    EFFICIENT = "efficient"    # the memory-efficient (CUTLASS) kernel
    MATH = "math"              # the composite of matmuls and softmax (saves the attention matrix)


_TLS = threading.local()  # this thread's backend counts (`counts`), while a simulation runs


@contextlib.contextmanager
def counting_backends(counts: dict[str, int] | None) -> Iterator[None]:
    """Count this thread's backend choices into `counts` (None: stop counting) while inside."""
    previous = getattr(_TLS, "counts", None)
    if counts is not None:
        _TLS.counts = counts
    try:
        yield
    finally:
        _TLS.counts = previous


def cuda_sdpa_backend(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa) -> Backend:
    """The backend `select_sdp_backend` picks on sm90 for a training step (dense inputs).

    aten/src/ATen/native/transformers/cuda/sdp_utils.cpp of PyTorch 2.11 and 2.13: flash checks
    `check_batch_size_and_num_heads_dense<true>` (grouped-query heads with enable_gqa) and takes
    only fp16 / bf16; the memory-efficient kernel checks `check_batch_size_and_num_heads_dense<false>`
    (the same number of heads in q, k and v, whatever enable_gqa says) and also takes fp32; cuDNN
    takes only fp16 / bf16. So fp32 attention with fewer kv heads (Qwen2-0.5B: 14 q, 2 kv heads,
    which transformers passes with enable_gqa=True when there is no mask) runs the math kernel,
    which repeats k and v to every head and saves the s x s attention matrix in fp32."""
    d, dk, dv = q.shape[-1], k.shape[-1], v.shape[-1]
    lq, lk = q.shape[-2], k.shape[-2]
    same_heads = q.shape[-3] == k.shape[-3] == v.shape[-3]
    gqa = enable_gqa and q.shape[-3] % k.shape[-3] == 0 and k.shape[-3] == v.shape[-3]
    if q.dim() != 4 or lq == 0 or lk == 0:
        return Backend.MATH
    if ((same_heads or gqa) and attn_mask is None and q.dtype in HALF and d == dk == dv and d <= 256
            and not (is_causal and lq != lk)):
        return Backend.FLASH
    align = 8 if q.dtype in HALF else 4
    if same_heads and q.dtype in (*HALF, torch.float32) and d == dk and d % align == 0 and dv % align == 0:
        return Backend.EFFICIENT
    return Backend.MATH


def _autocast_lower(*ts: torch.Tensor | None):
    """Autocast's lower_precision_fp cast of SDPA's inputs (SDPA is on CUDA's lower-precision list)."""
    if not torch.is_autocast_enabled("cpu"):
        return ts
    dt = torch.get_autocast_dtype("cpu")
    return tuple(t.to(dt) if (t is not None and t.is_floating_point() and t.dtype != torch.float64
                              and t.dtype != dt) else t for t in ts)


def cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False):
    """`torch.nn.functional.scaled_dot_product_attention` as the CUDA composite runs it.
    cuDNN attention, when preferred, saves the same as flash (output + softmax stats)."""
    query, key, value, attn_mask = _autocast_lower(query, key, value, attn_mask)
    backend = cuda_sdpa_backend(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
    counts = getattr(_TLS, "counts", None)
    if counts is not None:
        counts[backend] = counts.get(backend, 0) + 1
    if backend is Backend.FLASH:
        return _flash(query, key, value, dropout_p, is_causal, scale)
    if backend is Backend.EFFICIENT:
        return _efficient(query, key, value, attn_mask, dropout_p, is_causal, scale)
    return aten._scaled_dot_product_attention_math(query, key, value, attn_mask, dropout_p, is_causal,
                                                   None, scale=scale, enable_gqa=enable_gqa)[0]


def _flash(query, key, value, dropout_p, is_causal, scale):
    d = query.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    pad = (-d) % 8
    if pad:  # pad_last_dim<8> in the CUDA composite
        query, key, value = (torch.nn.functional.pad(t, (0, pad)) for t in (query, key, value))
    out = aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False,
                                                   scale=scale)[0]
    return out[..., :d] if pad else out


def _efficient(query, key, value, attn_mask, dropout_p, is_causal, scale):
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:  # convert_boolean_attn_mask
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(
                attn_mask.logical_not(), float("-inf"))
        pad = (-attn_mask.shape[-1]) % 16  # preprocess_mask: pad_bias<16>
        if pad:
            attn_mask = torch.nn.functional.pad(attn_mask, (0, pad))[..., :attn_mask.shape[-1]]
        attn_mask = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    compute_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, compute_lse,
                                                        dropout_p, is_causal, scale=scale)[0]


# -- scratch of the fused backward kernels -------------------------------------------------------

def flash_backward_scratch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """FlashAttention-2 mha_bwd (aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp):
    softmax_d fp32 [B, H, round128(Lq)] and dq_accum fp32 [B, round128(Lq), H, round32(D)];
    with fewer kv heads also dk/dv expanded to all query heads."""
    q, k = args[1], args[2]
    b, h, lq, d = q.shape
    lq_r = -(-lq // 128) * 128
    d_r = -(-d // 32) * 32 if d <= 192 else 256
    n = rounded(b * h * lq_r * 4) + rounded(b * lq_r * h * d_r * 4)
    if k.shape[1] != h:
        n += 2 * rounded(b * k.shape[2] * h * d * q.element_size())
    return n


def efficient_backward_scratch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Memory-efficient (CUTLASS) backward: delta fp32 [B, H, Lq]; gradQ is accumulated in an fp32
    workspace when the output dtype is 16-bit."""
    q = args[1]
    b, h, lq, d = q.shape
    n = rounded(b * h * lq * 4)
    if q.dtype in HALF:
        n += rounded(b * h * lq * d * 4)
    return n


def safe_softmax_scratch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The math kernel's `_safe_softmax` (aten/src/ATen/native/SoftMax.cpp, a composite on CUDA):
    softmax into a new tensor, `self == -inf` into a boolean one, then `where(all -inf rows, 0, out)`
    into the result; the fake kernel makes the result only."""
    x = args[0]
    dtype = kwargs.get("dtype") or (args[2] if len(args) > 2 and args[2] is not None else x.dtype)
    return rounded(x.numel() * torch.empty((), dtype=dtype).element_size()) + rounded(x.numel())


# op -> (its scratch bytes, what they count as): kernel workspace, or the composite's activations
KERNEL_SCRATCH: dict[Any, tuple[Callable[[tuple[Any, ...], dict[str, Any]], int], Category]] = {
    aten._scaled_dot_product_flash_attention_backward.default: (flash_backward_scratch, Category.WORKSPACE),
    aten._scaled_dot_product_efficient_attention_backward.default: (efficient_backward_scratch, Category.WORKSPACE),
    aten._safe_softmax.default: (safe_softmax_scratch, Category.ACTIVATIONS),
}
