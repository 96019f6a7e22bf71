"""The human output of `inspect`, `estimate`, `step` and `export`, character for character, against the
golden files in tests/test_output/ (`python -m pytest tests/test_cli_output.py --overwrite` rewrites them
after an intended change; review the diff before committing it).

The commands run in process with rich at a fixed width and no colour. Nothing in them depends on the
machine except the step's timings, which are set to zero before printing, and the transformers patch
release, shown as 5.24.x."""

from __future__ import annotations

import dataclasses
import re

import pytest

import freezelab.step as step_package
from freezelab.cli import main

INSPECT = {
    "inspect_tiny_stage1_depth3": ["tiny", "--preset", "stage1", "--depth", "3"],
    "inspect_tiny_rules_warnings": ["tiny", "--train", "@llm.layers[-2:]", "--freeze", "*.bias", "--train",
                                    "*q_proj*", "--depth", "1"],
    "inspect_llava7b_projector": ["llava-1.5-7b", "--train", "@projector"],
    "inspect_onevision05b_stage2_tied": ["llava-onevision-qwen2-0.5b", "--preset", "stage2", "--depth", "1"],
    "inspect_llava7b_lora_recipe": ["llava-1.5-7b", "--train", "@projector", "--lora", "@llm", "--lora-r", "128",
                                    "--lora-alpha", "256", "--depth", "1"],
    "inspect_tiny_dora_last_layer": ["tiny", "--lora", "@llm.layers[-1:]", "--dora", "--lora-r", "4", "--depth", "7"],
}
ESTIMATE = {
    "estimate_llava7b_stage1_b4": ["llava-1.5-7b", "--preset", "stage1", "--batch", "4", "--text-tokens", "448"],
    "estimate_llava7b_full_zero3": ["llava-1.5-7b", "--preset", "full", "--grad-ckpt", "--gpus", "8",
                                    "--sharding", "zero3"],
    "estimate_mistral7b_last4_anyres": ["llava-v1.6-mistral-7b", "--preset", "last-4", "--image-size", "672",
                                        "--dtype", "fp32", "--autocast", "bf16", "--optimizer", "sgd-momentum",
                                        "--attn", "eager"],
    "estimate_tiny_stage2_gpu24": ["tiny", "--preset", "stage2", "--images", "0", "--gpu-memory", "24"],
    "estimate_llava7b_lora_recipe": ["llava-1.5-7b", "--train", "@projector", "--lora", "@llm", "--lora-r", "128",
                                     "--lora-alpha", "256", "--grad-ckpt", "--batch", "4", "--text-tokens", "448"],
    "estimate_llava7b_qlora": ["llava-1.5-7b", "--lora", "@llm", "--lora-r", "64", "--lora-alpha", "16", "--quant",
                               "4bit", "--grad-ckpt", "--optimizer", "paged-adamw-8bit", "--text-tokens", "1024"],
}
EXPORT = {
    "export_llava7b_stage1_python": ["llava-1.5-7b", "--preset", "stage1", "--format", "python"],
    "export_llava7b_last4_llamafactory": ["llava-1.5-7b", "--preset", "last-4", "--format", "llamafactory"],
    "export_llava7b_stage1_llava": ["llava-1.5-7b", "--preset", "stage1", "--format", "llava"],
    "export_mistral7b_stage2_swift": ["llava-v1.6-mistral-7b", "--preset", "stage2", "--format", "swift"],
    "export_tiny_rules_json": ["tiny", "--train", "@projector", "--train", "@llm.layers[-1:]"],
}
PATCH_RELEASE = re.compile(r"(\btransformers \d+\.\d+)\.\d+(?:\.?(?:dev|rc|post|a|b)\d+)?")
STEP = {
    "step_tiny_stage1": ["tiny", "--preset", "stage1"],
    "step_tiny_vision_projector_ckpt": ["tiny", "--preset", "vision-projector", "--grad-ckpt", "--steps", "3"],
    "step_tiny_stage1_text_only_fails": ["tiny", "--preset", "stage1", "--images", "0"],
}


@pytest.fixture()
def fixed_console(monkeypatch):
    """rich at 120 columns without colour, whatever terminal the tests run in."""
    monkeypatch.setenv("COLUMNS", "120")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS"):
        monkeypatch.delenv(name, raising=False)


def _run(capsys, command: str, argv: list[str]) -> tuple[int, str]:
    code = main([command, *argv])
    out, err = capsys.readouterr()
    text = out + (f"--- stderr ---\n{err}" if err else "")
    return code, PATCH_RELEASE.sub(r"\1.x", text)  # requirements allow any 5.24 patch release


@pytest.mark.parametrize("name", sorted(INSPECT))
def test_inspect_output(name, capsys, golden, fixed_console):
    code, text = _run(capsys, "inspect", INSPECT[name])
    assert code == 0
    golden(name, text)


@pytest.mark.parametrize("name", sorted(ESTIMATE))
def test_estimate_output(name, capsys, golden, fixed_console):
    code, text = _run(capsys, "estimate", ESTIMATE[name])
    assert code == 0
    golden(name, text)


@pytest.mark.parametrize("name", sorted(EXPORT))
def test_export_output(name, capsys, golden, fixed_console):
    code, text = _run(capsys, "export", EXPORT[name])
    assert code == 0
    golden(name, text)


@pytest.fixture()
def untimed_steps(monkeypatch):
    """The real run, its step timings set to zero: the one machine-dependent figure of the output."""
    real = step_package.run_step

    def run_step(*args, **kwargs):
        report = real(*args, **kwargs)
        report.steps = [dataclasses.replace(s, seconds=0.0) for s in report.steps]
        report.seconds = 0.0
        return report

    monkeypatch.setattr(step_package, "run_step", run_step)


@pytest.mark.parametrize("name", sorted(STEP))
def test_step_output(name, capsys, golden, fixed_console, untimed_steps):
    code, text = _run(capsys, "step", STEP[name])
    assert code == (1 if name.endswith("_fails") else 0)
    golden(name, text)
