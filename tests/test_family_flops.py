"""Freeze-aware FLOPs of the families beyond LLaVA: the analytic count (freezelab.compute.flops on the
families' stages, freezelab.memory.image_paths) equals what FlopCounterMode counts on the simulated step,
exactly, on each family's tiny model, with and without gradient checkpointing; the patch convolution and
the attention kernels of the families by hand."""

from __future__ import annotations

import json

import pytest
from tiny_families import CONFIGS, config

from freezelab.compute.flops import flops_followed, step_flops
from freezelab.memory.simulate import simulate_step
from freezelab.models import hf_config, index_of
from freezelab.plans import preset, resolve
from freezelab.sources import resolve as resolve_source
from freezelab.workload import Workload

WORKLOAD = Workload(text_tokens=8, image_sizes=((112, 84),))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    out = {}
    for kind in CONFIGS:
        path = tmp_path_factory.mktemp(kind) / "config.json"
        path.write_text(json.dumps(config(kind)))
        out[kind] = resolve_source(str(path))
    return out


def test_every_checked_family_is_followed(sources):
    assert all(flops_followed(index_of(sources[kind]), WORKLOAD) is None for kind in CONFIGS)


def _counts(source, plan: str, w: Workload) -> tuple[tuple[int, int], tuple[int, int]]:
    index = index_of(source)
    res = resolve(preset(plan), index)
    a = step_flops(index, res.mask, w)
    s = simulate_step(hf_config(source), res.trainable_names(index), w, processor=index.processor).details["flops"]
    return (a.forward, a.backward), (s["forward"], s["backward"])


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_simulated_flop_counter_equals_analytic(kind, sources):
    """stage1 (the frozen tower runs no backward, or only under checkpointing's input hooks, which
    Qwen3-VL's tower does not expose), last-2 (the backward starts in the LLM) and full."""
    for plan in ("stage1", "last-2", "full"):
        for ckpt in (False, True):
            analytic, counted = _counts(sources[kind], plan, WORKLOAD.with_(grad_ckpt=ckpt))
            assert analytic == counted, (plan, ckpt)


@pytest.mark.parametrize(("kind", "changes"), [
    ("qwen2_5_vl", {"batch": 2, "images": 2, "image_sizes": ((112, 84), (56, 56))}),
    ("gemma3", {"attn": "eager"}),
    ("internvl", {"dtype": "fp32", "autocast": "bf16"}),
    ("mistral3", {"batch": 2}),
])
def test_simulated_flop_counter_equals_analytic_on_other_workloads(kind, changes, sources):
    for ckpt in (False, True):
        analytic, counted = _counts(sources[kind], "stage2", WORKLOAD.with_(grad_ckpt=ckpt, **changes))
        assert analytic == counted, ckpt


def test_qwen_patch_convolution_by_hand(sources):
    """Qwen2.5-VL's Conv3d over frame pairs: 2 x patches x (3·2·14·14) x hidden; a 112x84 image is an
    8 x 6 grid of 14-pixel patches. Pixels need no gradient: a trained patch embedding adds its weight
    gradient only."""
    index = index_of(sources["qwen2_5_vl"])
    w = WORKLOAD
    frozen = step_flops(index, resolve(preset("frozen"), index).mask, w)
    emb = next(s for s in frozen.by_stage if s.name == "vision.embeddings")
    assert emb.split.forward == 2 * (8 * 6) * (3 * 2 * 14 * 14) * 32 == 3_612_672
    full = step_flops(index, resolve(preset("full"), index).mask, w)
    emb = next(s for s in full.by_stage if s.name == "vision.embeddings")
    assert (emb.split.backward_input, emb.split.backward_weight) == (0, 3_612_672)


def test_gemma3_image_attention_runs_the_efficient_kernel_by_hand(sources):
    """Gemma 3 with an image masks its attention (image tokens see each other both ways): SDPA runs the
    memory-efficient kernel, 4·b·h·s²·d forward and 10·b·h·s²·d backward per layer, whatever needs a
    gradient. The tower's flash attention (16 patches of a 56-pixel image, 4 heads of 8) runs no backward
    when frozen."""
    index = index_of(sources["gemma3"])
    f = step_flops(index, resolve(preset("stage1"), index).mask, WORKLOAD)
    s = f.tokens  # batch 1: the LLM's sequence
    tower = 2 * 4 * 4 * 16 * 16 * 8
    assert f.attention.forward == 2 * 4 * 4 * s * s * 8 + tower
    assert f.attention.backward_input == 2 * 10 * 4 * s * s * 8
