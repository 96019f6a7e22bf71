"""The sanity step with adapters on the tiny model (CPU): LoRA and DoRA pass every check, LoRA's start
(A's gradient exactly zero in step 1 only) and the merge are checked, broken runs fail, and a quantized
base stops with one message before anything is built."""

from __future__ import annotations

import pytest
import torch

import freezelab.step.live as live_module
from freezelab.plan_files import from_text
from freezelab.quantize import QuantizationError
from freezelab.step import run_step
from freezelab.workload import Workload

pytest.importorskip("peft")

FP32 = Workload(dtype="fp32")
RECIPE = "adapter r=4 alpha=8\ntrain @projector\nlora @llm"
# tiny's LLM: 4 layers of 7 Linear layers, in + out = 1024 per layer; the projector 6,272
RECIPE_TRAINABLE = 4 * 4 * 1024 + 6272


def _failed(report):
    return {name for name, c in report.checks.items() if not c.passed}


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_lora_recipe_passes_on_tiny(tiny_source, steps):
    report = run_step(tiny_source, from_text(RECIPE), FP32, steps=steps)
    assert report.passed and _failed(report) == set(), report.checks
    assert report.trainable_params == RECIPE_TRAINABLE and report.trainable_tensors == 4 + 2 * 28
    start = report.checks["adapter_start"]
    assert start.passed and ("non-zero after it" in start.message) == (steps > 1)
    assert report.checks["merge_matches"].passed
    assert report.checks["frozen_unchanged"].message == "all 94 frozen tensors are bit-identical after the steps"


def test_dora_with_dropout_and_checkpointing_passes(tiny_source):
    plan = from_text("adapter r=2 alpha=4 dropout=0.1 dora=true\nlora @vision.layers[0:2]\nlora @llm.layers[-1]")
    report = run_step(tiny_source, plan, Workload(dtype="fp32", grad_ckpt=True))
    assert report.passed and _failed(report) == set(), report.checks
    assert report.trainable_tensors == 3 * (2 * 6 + 7)  # A, B and a magnitude per adapted layer


def test_adapters_behind_the_feature_layer_are_reported_dead(tiny_source):
    report = run_step(tiny_source, from_text("lora @vision"), FP32)
    dead = report.checks["dead_parameters"]
    assert not dead.passed and dead.count == 2 * 6  # the last CLIP layer's 6 adapters, A and B each
    assert all(".layers.2." in n for n in dead.offending)
    assert report.passed  # a warning


def _break_b(model, optimizer):
    """A B that does not start at zero: A's first gradient is no longer zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.fill_(0.01)


def _break_merge(model, optimizer):
    """A scaling the merge does not use: the merged model no longer equals the adapted one."""
    for module in model.modules():
        if hasattr(module, "scaling") and isinstance(module.scaling, dict):
            module.forward = _scaled_twice(module)


def _scaled_twice(module):
    original = module.forward

    def forward(x, *args, **kwargs):
        if module.merged:
            return original(x, *args, **kwargs)
        base = module.base_layer(x)
        return base + 2 * (original(x, *args, **kwargs) - base)
    return forward


def test_a_b_that_does_not_start_at_zero_fails(tiny_source):
    report = run_step(tiny_source, from_text(RECIPE), FP32, prepare=_break_b)
    assert "adapter_start" in _failed(report) and not report.passed
    check = report.checks["adapter_start"]
    assert check.count == 28 and "lora_B did not start at zero" in next(iter(check.causes.values()))


def test_a_merge_that_changes_the_output_fails(tiny_source):
    report = run_step(tiny_source, from_text(RECIPE), FP32, prepare=lambda m, o: (_break_b(m, o),
                                                                                _break_merge(m, o)))
    assert "merge_matches" in _failed(report)


def test_quantized_base_stops_before_anything_is_built(tiny_source, monkeypatch):
    built = []
    monkeypatch.setattr(live_module, "_model", lambda *a, **k: built.append(1))
    with pytest.raises(QuantizationError, match=r"^a quantized base \(4-bit NF4 with double quantization\) runs on CUDA only"):
        run_step(tiny_source, from_text("quant 4bit\n" + RECIPE), FP32)
    assert built == []


def test_step_cli_takes_adapter_options(capsys):
    import json

    from freezelab.cli import main

    code = main(["step", "tiny", "--train", "@projector", "--lora", "@llm", "--lora-r", "4", "--lora-alpha", "8",
                 "--steps", "1", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["passed"] and data["trainable_params"] == RECIPE_TRAINABLE
    assert data["adapter_params"] == 4 * 4 * 1024 and data["base_params"] == data["total_params"] - 4 * 4 * 1024
    assert data["checks"]["adapter_start"]["passed"] and data["checks"]["merge_matches"]["passed"]
    assert data["plan"]["rules"][1] == {"action": "lora", "selector": "@llm"} and data["plan"]["lora"]["r"] == 4
