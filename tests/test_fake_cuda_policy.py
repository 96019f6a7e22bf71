"""Where the simulator follows CUDA instead of CPU: the SDPA backend choice and its backward
scratch, and the CUDA autocast policy on top of CPU autocast."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from freezelab.memory.fake.autocast import CudaAutocastDelta
from freezelab.memory.fake.sdpa import (
    Backend,
    counting_backends,
    cuda_sdpa,
    cuda_sdpa_backend,
    efficient_backward_scratch,
    flash_backward_scratch,
)

BF16, FP32 = torch.bfloat16, torch.float32


def qkv(q_heads=4, kv_heads=4, lq=16, lk=16, d=64, dtype=BF16, dk=None):
    dev = "meta"
    return (torch.empty(2, q_heads, lq, d, dtype=dtype, device=dev),
            torch.empty(2, kv_heads, lk, dk or d, dtype=dtype, device=dev),
            torch.empty(2, kv_heads, lk, dk or d, dtype=dtype, device=dev))


@pytest.mark.parametrize("kw,mask,causal,gqa,backend", [
    ({}, False, True, False, Backend.FLASH),                       # bf16, causal, no mask
    ({"d": 60}, False, True, False, Backend.FLASH),                # flash pads the head dim to 8
    ({"d": 64, "dtype": FP32}, False, True, False, Backend.EFFICIENT),  # flash needs 16-bit
    ({}, True, False, False, Backend.EFFICIENT),                   # a mask rules flash out
    ({"d": 60}, True, False, False, Backend.MATH),                 # ... and 60 is not 8-aligned
    ({"lq": 8}, False, True, False, Backend.EFFICIENT),            # causal with lq != lk: not flash
    ({"kv_heads": 2}, False, True, False, Backend.MATH),           # GQA without enable_gqa
    ({"kv_heads": 2}, False, True, True, Backend.FLASH),           # GQA native
    ({"kv_heads": 2, "dtype": FP32}, False, True, True, Backend.MATH),   # fp32 GQA: flash needs 16-bit,
    ({"kv_heads": 2}, True, False, True, Backend.MATH),            # efficient needs equal heads
    ({"d": 320}, False, True, False, Backend.EFFICIENT),           # head dim over flash's 256
    ({"dtype": torch.float64}, False, True, False, Backend.MATH),
    ({"dk": 32}, False, True, False, Backend.MATH),                # q and k head dims differ
])
def test_backend_choice_on_sm90(kw, mask, causal, gqa, backend) -> None:
    q, k, v = qkv(**kw)
    m = torch.empty(2, 1, q.shape[2], k.shape[2], dtype=q.dtype, device="meta") if mask else None
    assert cuda_sdpa_backend(q, k, v, m, 0.0, causal, gqa) is backend


def test_three_dimensional_inputs_take_the_math_path() -> None:
    q = torch.empty(4, 16, 64, dtype=BF16, device="meta")
    assert cuda_sdpa_backend(q, q, q, None, 0.0, True, False) is Backend.MATH


def test_cuda_sdpa_counts_its_backends_and_keeps_the_shape() -> None:
    counts: dict[str, int] = {}
    with FakeTensorMode(), counting_backends(counts):
        q = torch.empty(2, 4, 16, 60, dtype=BF16)
        out = cuda_sdpa(q, q, q, is_causal=True)                   # flash, padded to 64 and sliced back
        mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
        cuda_sdpa(q.float(), q.float(), q.float(), attn_mask=mask)  # efficient (bool mask converted)
    assert out.shape == (2, 4, 16, 60) and out.dtype == BF16
    assert counts == {Backend.FLASH: 1, Backend.EFFICIENT: 1}


def test_flash_backward_scratch() -> None:
    grad_out = q = torch.empty(2, 4, 100, 64, dtype=BF16, device="meta")
    # softmax_d fp32 [2, 4, 128] + dq_accum fp32 [2, 128, 4, 64]
    assert flash_backward_scratch((grad_out, q, q), {}) == 4096 + 262144
    k = torch.empty(2, 2, 100, 64, dtype=BF16, device="meta")
    # GQA: dk / dv expanded to the 4 query heads (bf16 [2, 100, 4, 64] each)
    assert flash_backward_scratch((grad_out, q, k), {}) == 4096 + 262144 + 2 * 102400


def test_efficient_backward_scratch() -> None:
    q = torch.empty(2, 4, 100, 64, dtype=BF16, device="meta")
    # delta fp32 [2, 4, 100] (3200 B -> 3584) + an fp32 gradQ accumulator for 16-bit outputs
    assert efficient_backward_scratch((q, q), {}) == 3584 + 204800
    assert efficient_backward_scratch((q, q.float()), {}) == 3584


def test_autocast_delta_follows_cuda_where_cpu_autocast_differs() -> None:
    x = torch.randn(4, 4, dtype=BF16)
    mat, vec = torch.randn(4, 4), torch.randn(4)
    with torch.autocast("cpu", dtype=BF16):
        cpu = [torch.exp(x), torch.softmax(x, -1), torch.sum(x), torch.layer_norm(x, (4,)), torch.mv(mat, vec)]
        with CudaAutocastDelta():
            cuda = [torch.exp(x), torch.softmax(x, -1), torch.sum(x), torch.layer_norm(x, (4,)),
                    torch.mv(mat, vec)]
            explicit = torch.softmax(x, -1, dtype=BF16)
    assert [t.dtype for t in cpu] == [BF16, BF16, BF16, BF16, FP32]
    # fp32 ops (exp, layer_norm), fp32 output dtype (softmax, sum), mv on the lower-precision list
    assert [t.dtype for t in cuda] == [FP32, FP32, FP32, FP32, BF16]
    assert explicit.dtype == BF16  # a dtype the caller gives wins
    with CudaAutocastDelta():       # autocast off (or an enabled=False region): nothing changes
        assert torch.exp(x).dtype == BF16 and torch.mv(mat, vec).dtype == FP32
