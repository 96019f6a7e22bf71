"""The README's commands are the ones CI runs, and its examples are true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_two_setup_commands_present():
    blocks = bash_blocks()
    assert any("pip install -r requirements.txt" in b and "python app.py" in b for b in blocks)
    assert any("python -m pytest" in b for b in blocks)


def test_ci_runs_the_readme_test_command():
    test_cmd = next(b.strip() for b in bash_blocks() if "python -m pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_readme_inspect_example_is_true():
    out = subprocess.run([sys.executable, "-m", "freezelab", "inspect", "llava-1.5-7b", "--train", "@projector",
                          "--json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    shown = re.search(r"--json \| head -6\n(.*?)```", README, flags=re.S).group(1)
    for line in shown.strip().splitlines()[1:]:
        if "transformers_version" in line:
            continue  # the installed release may be a patch release ahead
        assert line.strip() in out, line


def test_readme_dashboard_walkthrough_numbers():
    """The walkthrough's figures are what the estimator computes for the default workload."""
    from freezelab.memory.analytic import estimate
    from freezelab.models import index_of
    from freezelab.plans import preset
    from freezelab.plans import resolve as resolve_plan
    from freezelab.sources import resolve
    from freezelab.units import params
    from freezelab.workload import Workload

    index = index_of(resolve("llava-1.5-7b"))
    for name, count, gib in (("stage2", "6.76B", "67.5 GiB"), ("stage1", "20.98M", "17.7 GiB")):
        mask = resolve_plan(preset(name), index).mask
        est = estimate(index, mask, Workload())
        trainable = sum(n for n, on in zip(index.numels, mask) if on)
        assert params(trainable) == count and count in README
        assert f"{est.device_estimate_bytes / 2**30:.1f} GiB" == gib and gib in README


def test_readme_projector_activation_example():
    """"16 GiB on top of 13 GiB of weights" for stage 1 at batch 4 x 1024 tokens."""
    from freezelab.memory.analytic import estimate
    from freezelab.models import index_of
    from freezelab.plans import preset
    from freezelab.plans import resolve as resolve_plan
    from freezelab.sources import resolve
    from freezelab.tokens import image_tokens
    from freezelab.workload import Workload

    index = index_of(resolve("llava-1.5-7b"))
    text = 1024 - image_tokens(index.config)
    est = estimate(index, resolve_plan(preset("stage1"), index).mask, Workload(batch=4, text_tokens=text))
    assert round(est.breakdown["weights"] / 2**30) == 13
    assert round(est.activations_by_component["llm"] / 2**30) == 16
    assert "16 GiB on top of 13 GiB" in README.replace("\n", " ")


def test_readme_compute_example():
    """Stage 1 / stage 2 / full FLOPs on llava-1.5-7b at batch 4 x (576 image + 1,024 text tokens)."""
    from freezelab.compute.flops import step_flops
    from freezelab.models import index_of
    from freezelab.plans import preset, resolve as resolve_plan
    from freezelab.sources import resolve
    from freezelab.workload import Workload

    index = index_of(resolve("llava-1.5-7b"))
    w = Workload(batch=4, text_tokens=1024)
    flops = {name: step_flops(index, resolve_plan(preset(name), index).mask, w) for name in ("stage1", "stage2", "full")}
    text = README.replace("\n", " ")
    assert (f"stage 1 (the projector, 20.98M parameters) runs {flops['stage1'].counted / 1e12:.1f} TFLOP per step, "
            f"stage 2 (6.76B parameters) {flops['stage2'].counted / 1e12:.1f} and a full fine-tune "
            f"{flops['full'].counted / 1e12:.1f}") in text
    assert f"costs {flops['stage1'].counted / flops['stage2'].counted:.0%} of its FLOPs" in text
    trains = {name: sum(n for n, on in zip(index.numels, resolve_plan(preset(name), index).mask) if on)
              for name in ("stage1", "stage2")}
    assert f"{trains['stage2'] / trains['stage1']:.0f}× fewer parameters" in text


def test_readme_small_model_and_lesson_figures():
    """The tiny model's tensors under its CUDA context (stage 1, default workload), and the lessons' workload."""
    from freezelab.memory.analytic import estimate
    from freezelab.models import index_of
    from freezelab.plans import preset
    from freezelab.plans import resolve as resolve_plan
    from freezelab.sources import resolve
    from freezelab.ui.learn_view import LESSONS, MODEL, WORKLOAD
    from freezelab.units import gib, nbytes
    from freezelab.workload import Workload

    index = index_of(resolve("tiny"))
    est = estimate(index, resolve_plan(preset("stage1"), index).mask, Workload())
    flat = " ".join(README.split())
    tensors, device = nbytes(est.peak_bytes), gib(est.device_estimate_bytes)
    assert f"the tiny model: {tensors} of tensors under {device} on the GPU" in flat
    words = {4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
    assert f"{words[len(LESSONS)]} steps on {MODEL}" in flat
    assert f"batch {WORKLOAD.batch} × {WORKLOAD.text_tokens:,} text tokens and an image" in flat
    assert WORKLOAD.images == 1
