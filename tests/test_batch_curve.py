"""The memory curve's points (freezelab.memory.batch_curve) are exactly the estimates they stand for:
each batch's tensor peak and its device figure with the current batch's replayed cache share."""

from __future__ import annotations

import pytest

from freezelab.memory import batch_curve
from freezelab.memory.analytic import estimate
from freezelab.model_cache import ModelCache
from freezelab.plan_files import from_text
from freezelab.plans import preset, resolve
from freezelab.workload import Workload

CASES = [
    ("llava-1.5-7b", "stage2", Workload(text_tokens=448)),
    ("llava-1.5-7b", "full", Workload(batch=2, grad_ckpt=True, dtype="fp32", autocast="bf16")),
    ("llava-1.5-7b", "stage2", Workload(batch=3, gpus=8, sharding="zero3")),
    ("llava-onevision-qwen2-0.5b", "last-2", Workload(batch=2, attn="eager", optimizer="adafactor")),
    ("tiny", "stage1", Workload(batch=4, images=0)),
]


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache()


@pytest.mark.parametrize("model,plan,w", CASES)
def test_each_point_is_the_estimate_at_its_batch(cache, model, plan, w):
    index = cache.get(model).index
    mask = resolve(preset(plan), index).mask
    current = estimate(index, mask, w)
    share = current.details["allocator_cache_bytes"] / current.peak_bytes
    points = batch_curve.batch_curve(index, mask, w, current, [1, 2, 4, w.batch, 64], stop_above=2**62)
    assert [p.batch for p in points] == [1, 2, 4, w.batch, 64]
    for p in points:
        full = current if p.batch == w.batch else estimate(index, mask, w.with_(batch=p.batch), cache_share=share)
        assert (p.peak_bytes, p.device_estimate_bytes) == (full.peak_bytes, full.device_estimate_bytes)


def test_points_with_adapters_are_the_estimates_at_their_batch(cache):
    index = cache.get("llava-1.5-7b").index
    res = resolve(from_text("adapter r=16 dora=true\ntrain @projector\nlora @llm"), index)
    assert res.adapters is not None
    w = Workload(text_tokens=256)
    current = estimate(index, res.mask, w, adapters=res.adapters)
    share = current.details["allocator_cache_bytes"] / current.peak_bytes
    for p in batch_curve.batch_curve(index, res.mask, w, current, [1, 4, 16], 2**62, res.adapters):
        full = estimate(index, res.mask, w.with_(batch=p.batch), cache_share=share, adapters=res.adapters)
        assert (p.peak_bytes, p.device_estimate_bytes) == (full.peak_bytes, full.device_estimate_bytes)


def test_the_curve_stops_one_point_past_the_limit_and_the_current_batch(cache):
    index = cache.get("llava-1.5-7b").index
    mask = resolve(preset("full"), index).mask
    w = Workload(batch=4, text_tokens=448)
    current = estimate(index, mask, w)
    limit = current.device_estimate_bytes - 1          # batch 1 fits under it, batch 4 (current) does not
    points = batch_curve.batch_curve(index, mask, w, current, [1, 4, 16, 64], stop_above=limit)
    assert [p.batch for p in points] == [1, 4]
    low = batch_curve.batch_curve(index, mask, w, current, [1, 4, 16, 64], stop_above=0)
    assert [p.batch for p in low] == [1, 4]             # not before the current batch
