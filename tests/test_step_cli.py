"""`python -m freezelab step`: JSON shape, exit codes, human output, real examples and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_configs import TINY, make_image, make_processor_dir

from freezelab.batch import synthetic
from freezelab.cli import main
from freezelab.models import build
from freezelab.sources import resolve as resolve_source
from freezelab.workload import Workload

TEXT = TINY["text_config"]
PROJECTOR_PARAMS = (TINY["vision_config"]["hidden_size"] * TEXT["hidden_size"] + TEXT["hidden_size"]
                    + TEXT["hidden_size"] ** 2 + TEXT["hidden_size"])


def _json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["step", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_json_has_the_documented_fields(capsys):
    code, data = _json(capsys, "tiny", "--preset", "stage1", "--steps", "3")
    assert code == 0 and data["passed"] is True and data["device"] == "cpu"
    assert data["trainable_params"] == PROJECTOR_PARAMS
    assert data["workload"]["dtype"] == "fp32"  # the CPU default
    assert [s["step"] for s in data["steps"]] == [1, 2, 3]
    for s in data["steps"]:
        assert set(s) >= {"loss", "seconds", "peak_allocated_bytes", "peak_reserved_bytes", "estimate_bytes", "error"}
        assert s["peak_allocated_bytes"] is None and s["error"] is None and s["loss"] > 0
    assert set(data["checks"]["optimizer"]) >= {"passed", "message", "offending", "count"}
    assert set(data["grad_norms"]) >= {"component", "layers"}
    assert data["grad_norms"]["component"]["vision"] is None and data["grad_norms"]["component"]["projector"] > 0
    assert len(data["grad_norms"]["layers"]["llm"]) == TEXT["num_hidden_layers"]


def test_workload_options_reach_the_batch(capsys):
    code, data = _json(capsys, "tiny", "--preset", "stage2", "--batch", "2", "--text-tokens", "9", "--images", "2",
                       "--dtype", "bf16", "--optimizer", "sgd", "--grad-ckpt", "--attn", "eager")
    assert code == 0
    assert data["batch"]["seq_len"] == 9 + 2 * 16 and data["batch"]["pixel_values"] == [4, 3, 56, 56]
    w = data["workload"]
    assert (w["batch"], w["dtype"], w["optimizer"], w["grad_ckpt"], w["attn"]) == (2, "bf16", "sgd", True, "eager")
    assert data["input_grad_hooks"] == 2


def test_failing_check_exits_1(capsys):
    code, data = _json(capsys, "tiny", "--preset", "stage1", "--images", "0")
    assert code == 1 and data["passed"] is False
    assert data["checks"]["gradients_present"]["count"] == 4


@pytest.mark.parametrize("argv", [
    ["tiny", "--steps", "0"],
    ["tiny", "--lr", "-1"],
    ["tiny", "--batch", "0"],
    ["tiny", "--text-tokens", "1"],
    ["tiny", "--optimizer", "adamw-8bit"],
    ["tiny", "--prompt", "hello"],
    ["tiny", "--image", "x.png"],
    ["tiny", "--image", "x.png", "--answer", "w1"],
    ["tiny", "--train", "no.such.thing"],
    ["no-such-model"],
    ["llava-1.5-7b", "--weights"],
])
def test_bad_input_exits_2_with_one_line(capsys, argv):
    assert main(["step", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "Traceback" not in "".join(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_exits_2(capsys):
    assert main(["step", "tiny", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_human_output_has_the_tables_and_verdict(capsys):
    assert main(["step", "tiny", "--preset", "full"]) == 0
    out = capsys.readouterr().out
    for title in ("steps", "checks", "gradient norms", "dead_parameters", "vision_feature_layer=-2", "PASSED"):
        assert title in out


def test_human_output_of_a_failure(capsys):
    assert main(["step", "tiny", "--preset", "stage1", "--images", "0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "text-only batch" in out and "FAILED" in out


def test_real_example_from_a_checkpoint_directory(capsys, tmp_path):
    make_processor_dir(tmp_path)
    image = make_image(tmp_path / "cat.png")
    code, data = _json(capsys, str(tmp_path), "--preset", "stage2", "--image", str(image), "--prompt", "w1 w2",
                       "--answer", "w3 w4")
    assert code == 0 and data["batch"]["kind"] == "example"
    assert data["batch"]["supervised_tokens"] == 3  # two answer words and the end-of-sequence token
    assert data["weights"] == "random"


def test_weights_are_loaded_from_a_checkpoint(capsys, tmp_path):
    saved = build(resolve_source("tiny"), device="cpu", dtype="fp32", seed=7)
    saved.save_pretrained(str(tmp_path))
    code, data = _json(capsys, str(tmp_path), "--preset", "stage1", "--weights", "--seed", "1")
    assert code == 0 and data["weights"] == "checkpoint"
    # step 1's loss is the saved model's loss on the seed-1 batch, not a seed-1 model's
    batch = synthetic(saved.config.to_dict(), Workload(dtype="fp32"), seed=1)
    saved.train()
    with torch.no_grad():
        expected = saved(**batch.inputs).loss.item()
    assert data["steps"][0]["loss"] == pytest.approx(expected, rel=1e-6)
    _, random = _json(capsys, str(tmp_path), "--preset", "stage1", "--seed", "1")
    assert random["steps"][0]["loss"] != pytest.approx(expected, rel=1e-6)
