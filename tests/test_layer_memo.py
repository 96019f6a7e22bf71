"""Layer stages kept across estimates (freezelab.memory.layer_memo) change no number: an estimate
made after many others (kept stages from other plans, workloads and layers) equals the same estimate
on a fresh index object, whose memos are empty, replay included."""

from __future__ import annotations

import random

import pytest

from freezelab.compute.flops import step_flops
from freezelab.memory import layer_memo
from freezelab.memory.analytic import estimate
from freezelab.models import index_of
from freezelab.plan_files import from_text
from freezelab.plans import resolve
from freezelab.sources import resolve as resolve_source
from freezelab.workload import Workload


def _cases(index, n: int, seed: int):
    rng = random.Random(seed)
    for k in range(n):
        mask = [rng.random() < 0.3 for _ in index.params]
        yield mask, Workload(batch=rng.choice([1, 2]), grad_ckpt=rng.random() < 0.5,
                             dtype=rng.choice(["bf16", "fp32"]), attn=rng.choice(["sdpa", "eager"]))


def _figures(index, mask, w, adapters=None):
    e = estimate(index, mask, w, adapters=adapters)
    return (e.peak_bytes, e.device_estimate_bytes, e.details["allocator_reserved_bytes"],
            step_flops(index, mask, w, adapters=adapters).total)


@pytest.mark.parametrize("model", ["tiny", "llava-interleave-qwen-0.5b", "qwen2-vl-2b-instruct"])
def test_an_estimate_after_others_equals_a_fresh_one(model):
    warm = index_of(resolve_source(model))
    cases = list(_cases(warm, 12, seed=3))
    for mask, w in reversed(cases):   # fill the memo with every case, in another order
        _figures(warm, mask, w)
    assert len(layer_memo._kept(warm)) > 0
    for mask, w in cases:
        assert _figures(warm, mask, w) == _figures(index_of(resolve_source(model)), mask, w)


def test_a_layer_reuses_another_layers_stage_with_its_own_parameters():
    """Layer 0 trains in one plan and layer 1 in the next: the second takes the first's kept stage,
    its program naming layer 1's parameters, so layer 1's gradients are the ones replayed."""
    model = "llava-interleave-qwen-0.5b"
    index = index_of(resolve_source(model))
    first = resolve(from_text("train @llm.layers[0]"), index).mask
    second = resolve(from_text("train @llm.layers[1]"), index).mask
    w = Workload(batch=2, text_tokens=256)
    _figures(index, first, w)
    assert _figures(index, second, w) == _figures(index_of(resolve_source(model)), second, w)


def test_adapters_and_a_quantized_base_too():
    index = index_of(resolve_source("tiny"))
    plans = ["adapter r=8\ntrain @projector\nlora @llm", "quant 4bit\nadapter r=4 dora=true\nlora @llm.layers[-1:]",
             "adapter r=16\nlora @vision\nlora @llm.layers[:1]"]
    w = Workload(batch=2, grad_ckpt=True)
    resolved = [resolve(from_text(p), index) for p in plans]
    for res in resolved:
        _figures(index, res.mask, w, res.adapters)
    for text, res in zip(plans, resolved):
        fresh = index_of(resolve_source("tiny"))
        again = resolve(from_text(text), fresh)
        assert _figures(index, res.mask, w, res.adapters) == _figures(fresh, again.mask, w, again.adapters)
