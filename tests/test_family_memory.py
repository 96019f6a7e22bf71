"""The analytic memory estimate of every family beyond LLaVA against the simulated one (the real transformers
step on fake tensors), on each family's shipped config cut to a few layers (the real widths, vocabulary and
image layout; fewer layers only make both sides shorter). Both count 512-byte-rounded tensors; the simulated
peak also counts whole allocator blocks (benchmarks/family_accuracy.py prints both on the full configs)."""

from __future__ import annotations

import json

import pytest

from freezelab.memory.analytic import FOLLOWED, estimate
from freezelab.memory.claims import AGREEMENT_MAX
from freezelab.memory.result import Category
from freezelab.memory.simulate import simulate_step
from freezelab.models import hf_config, index_of
from freezelab.plans import preset
from freezelab.plans import resolve as resolve_plan
from freezelab.sources import KNOWN_DIR, resolve
from freezelab.workload import Workload

MODELS = {"qwen2_vl": "qwen2-vl-2b-instruct", "qwen2_5_vl": "qwen2.5-vl-3b-instruct", "qwen3_vl": "qwen3-vl-2b-instruct",
          "internvl": "internvl3-1b-hf", "gemma3": "gemma-3-4b-it", "paligemma": "paligemma2-3b-pt-224",
          "idefics3": "smolvlm-256m-instruct", "smolvlm": "smolvlm2-2.2b-instruct",
          "mistral3": "mistral-small-3.1-24b-instruct-2503"}
CASES = [("stage1", 2, False), ("full", 1, True)]
TOLERANCE = 0.005  # of the simulated tensor peak


def cut(name: str, tmp_path, vision_layers: int = 2, text_layers: int = 3):
    config = json.loads((KNOWN_DIR / f"{name}.json").read_text())
    vision = config["vision_config"]
    vision["depth" if "depth" in vision else "num_hidden_layers"] = vision_layers
    if "deepstack_visual_indexes" in vision:
        vision["deepstack_visual_indexes"] = list(range(vision_layers))
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = [vision_layers - 1]
    text = config["text_config"] if "num_hidden_layers" in config.get("text_config", {}) else config
    text["num_hidden_layers"] = text_layers
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))  # keeps _freezelab (processor settings) but a path is not "known"
    source = resolve(str(path))
    object.__setattr__(source, "processor", resolve(name).processor)
    return source


def test_every_family_is_followed():
    assert set(MODELS) <= set(FOLLOWED)


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_analytic_equals_simulated_tensors(model_type, tmp_path):
    source = cut(MODELS[model_type], tmp_path)
    index = index_of(source)
    index.processor = dict(source.processor)
    for plan, batch, ckpt in CASES:
        w = Workload(batch=batch, text_tokens=128, image_sizes=((448, 672),), grad_ckpt=ckpt)
        res = resolve_plan(preset(plan), index)
        a = estimate(index, res.mask, w).peak_bytes
        s = simulate_step(hf_config(source), res.trainable_names(index), w, processor=index.processor)
        tensors = s.details["step2_peak_rounded_bytes"]
        assert abs(a - tensors) <= TOLERANCE * tensors, (plan, batch, ckpt, a, tensors)
        assert abs(a - s.peak_bytes) <= 0.02 * s.peak_bytes, (plan, batch, ckpt, a, s.peak_bytes)


@pytest.mark.parametrize("model_type", ["idefics3", "smolvlm"])
def test_frozen_layers_before_the_first_trainable_hold_no_kv_cache(model_type, tmp_path):
    """Idefics3Model.forward reads the top-level config.use_cache, SmolVLMModel.forward has it filled from
    there (@merge_with_config_defaults): the protocol's `model.config.use_cache = False` turns the KV cache
    off, so the frozen layers before the first trainable one hold nothing. A tiny model with full-width
    k and v (as SmolVLM2's text model) and three frozen layers, where a held cache would be most of the peak."""
    from tiny_families import config

    cfg = config(model_type)
    cfg["text_config"].update(num_hidden_layers=4, num_key_value_heads=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    source = resolve(str(path))
    index = index_of(source)
    w = Workload(batch=2, text_tokens=256, image_sizes=((112, 84),))
    res = resolve_plan(preset("last-1"), index)
    a = estimate(index, res.mask, w)
    s = simulate_step(hf_config(source), res.trainable_names(index), w, processor=index.processor)
    assert a.cublas_workspaces == s.cublas_workspaces
    # the peak without the cuBLAS workspaces (most of a tiny model's peak), as the agreement grid compares it;
    # a cache held in the three frozen layers would add 261,120 B (+5.6%)
    workspace = a.breakdown[Category.WORKSPACE]
    body_a, body_s = a.peak_bytes - workspace, s.peak_bytes - workspace
    assert abs(body_a - body_s) <= AGREEMENT_MAX * body_s, (body_a, body_s)
