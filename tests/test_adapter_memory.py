"""Memory with adapters: the quantized storage facts by hand, the analytic estimate against the simulated one
(PEFT's own modules on fake tensors) on a tiny grid, with the FLOPs FlopCounterMode counts on it, paged
optimizer state outside the allocator, the adapters' FLOPs by hand."""

from __future__ import annotations

import statistics

import pytest

from freezelab.compute.flops import step_flops
from freezelab.lora import Quantization
from freezelab.memory.analytic import estimate
from freezelab.memory.quantized import storage_bytes
from freezelab.models import hf_config
from freezelab.plan_files import from_text
from freezelab.plans import resolve
from freezelab.workload import Workload

pytest.importorskip("peft")
from freezelab.memory.simulate import simulate_step  # noqa: E402


def test_quantized_storage_by_hand():
    n = 4096 * 4096  # 262,144 blocks of 64
    nf4_double = 8_388_608 + 512 + 262_144 + 4_096 + 1_024 + 512  # packed, code, uint8 absmax, nested absmax,
    assert storage_bytes(n, 4096, Quantization("4bit")) == nf4_double  # dynamic code copy, offset
    assert storage_bytes(n, 4096, Quantization("4bit", "fp4", False)) == 8_388_608 + 512 + 1_048_576
    assert storage_bytes(n, 4096, Quantization("8bit")) == 16_777_216 + 16_384
    assert nf4_double / n == pytest.approx(0.516, abs=0.001)  # 0.5 byte per weight plus the block constants


GRID = ("adapter r=8 dropout=0.1\ntrain @projector\nlora @llm", "adapter r=8 dora=true\ntrain @projector\nlora @llm",
        "adapter r=16\nlora @vision\nlora @llm.layers[-2:]", "quant 4bit\nadapter dora=true\nlora @llm")


def test_analytic_agrees_with_simulated_on_tiny(tiny_source, tiny_index):
    """Within 1% median, 2% max (the targets on the 7B and 0.5B configs), on what is left after the cuBLAS
    workspaces that dominate the tiny model's peak; the FLOPs exactly (LoRA's matmuls, DoRA's weight norm
    and its base product recomputed under dropout, the frozen base's input gradient, the recompute)."""
    diffs = []
    for text in GRID:
        res = resolve(from_text(text), tiny_index)
        for ckpt in (False, True):
            w = Workload(batch=4, text_tokens=256, grad_ckpt=ckpt)
            a = estimate(tiny_index, res.mask, w, adapters=res.adapters)
            s = simulate_step(hf_config(tiny_source), res.trainable_names(tiny_index), w, adapters=res.adapters,
                              index=tiny_index)
            assert a.breakdown["weights"] == s.breakdown["weights"], text
            assert a.breakdown["optimizer_state"] == s.breakdown["optimizer_state"], text
            f = step_flops(tiny_index, res.mask, w, adapters=res.adapters)
            assert (f.forward, f.backward) == (s.details["flops"]["forward"], s.details["flops"]["backward"]), text
            work = a.breakdown["workspace"]
            diffs.append(abs(a.peak_bytes - s.peak_bytes) / (s.peak_bytes - work))
    assert statistics.median(diffs) <= 0.01 and max(diffs) <= 0.02, diffs


def test_adapter_flops_by_hand(shipped_indexes):
    """LLaVA-1.5-7B, every LLM Linear at r=8, batch 4 x (576 image + 1,024 text tokens): each adapted Linear
    adds 2·tokens·r·(in + out) FLOPs to the forward, as much to the weight gradients (A and B) and as much to
    the input gradients (through B, then A); the frozen bases add no weight-gradient matmul."""
    index = shipped_indexes["llava-1.5-7b"]
    w = Workload(batch=4, text_tokens=1024, images=1)
    base = resolve(from_text("train @projector"), index)
    lora = resolve(from_text("adapter r=8\ntrain @projector\nlora @llm"), index)
    plain, adapted = step_flops(index, base.mask, w), step_flops(index, lora.mask, w, adapters=lora.adapters)
    per_layer = 4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096)  # q k v o, gate up, down
    extra = 2 * 4 * (576 + 1024) * 8 * 32 * per_layer
    assert extra == 255_852_544_000
    assert adapted.split.forward - plain.split.forward == extra
    assert adapted.split.backward_weight - plain.split.backward_weight == extra
    assert adapted.split.backward_input - plain.split.backward_input == extra


def test_paged_optimizer_state_is_outside_the_allocator(tiny_source, tiny_index):
    # lm_head's adapter at r=256: A is 256 x 64 (16,384 elements, in the allocator), B 512 x 256 (131,072: paged)
    res = resolve(from_text("adapter r=256\nlora @lm_head"), tiny_index)
    w = Workload(batch=1, text_tokens=16, optimizer="paged-adamw")
    a = estimate(tiny_index, res.mask, w, adapters=res.adapters)
    assert a.details["paged_optimizer_state_bytes"] == 2 * 131_072 * 4
    assert a.breakdown["optimizer_state"] == 2 * 16_384 * 4
    assert any("unified memory" in n for n in a.notes)
    s = simulate_step(hf_config(tiny_source), res.trainable_names(tiny_index), w, adapters=res.adapters,
                      index=tiny_index)
    assert s.breakdown["optimizer_state"] == a.breakdown["optimizer_state"]
