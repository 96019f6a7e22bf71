"""`python -m freezelab estimate`: the JSON contract, the human table, and bad input."""

from __future__ import annotations

import json

import pytest

from freezelab.cli import main
from freezelab.memory.analytic import estimate
from freezelab.memory.result import CATEGORIES
from freezelab.memory.gpus import GPUS
from freezelab.models import index_of
from freezelab.plans import preset, resolve
from freezelab.sources import resolve as resolve_source
from freezelab.workload import Workload


def run_json(capsys, *args: str) -> dict:
    assert main(["estimate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_contract_matches_the_library(capsys) -> None:
    data = run_json(capsys, "llava-1.5-7b", "--preset", "stage1", "--batch", "4", "--text-tokens", "448",
                    "--images", "1")
    index = index_of(resolve_source("llava-1.5-7b"))
    est = estimate(index, resolve(preset("stage1"), index).mask, Workload(batch=4, text_tokens=448))
    assert data["method"] == "analytic"
    assert data["peak_bytes"] == est.peak_bytes == sum(data["breakdown"].values())
    assert set(data["breakdown"]) == set(CATEGORIES)
    assert data["device_estimate_bytes"] == est.device_estimate_bytes
    assert data["phase"] == est.phase
    assert data["activations_by_component"] == est.activations_by_component
    assert data["notes"] == est.notes and 2 <= len(data["notes"]) <= 5
    assert data["trainable_params"] == 20_979_712
    assert data["workload"]["batch"] == 4 and data["plan"]["preset"] == "stage1"
    # no --gpu-memory: a verdict for each common card
    assert set(data["fits"]) == {g.name for g in GPUS}
    assert data["fits"]["RTX 4090 24 GB"] is False and data["fits"]["H100 80 GB"] is True
    # each card against its own figure: off sm90 the two cuBLAS workspaces (forward and autograd thread)
    # are PyTorch's other default, 8 MiB + 128 KiB instead of 32 MiB
    other_arch = data["device_estimate_bytes"] - 2 * (32 * 2**20 - (8 * 2**20 + 128 * 2**10))
    assert {r["gpu"]: r["architecture"] for r in data["gpus"]} == {
        "RTX 4090 24 GB": "sm89", "A100 40 GB": "sm80", "L40S 48 GB": "sm89", "RTX A6000 48 GB": "sm86",
        "A100 80 GB": "sm80", "H100 80 GB": "sm90", "H200 141 GB": "sm90"}
    for r in data["gpus"]:
        own = data["device_estimate_bytes"] if r["architecture"] == "sm90" else other_arch
        assert r["device_estimate_bytes"] == own and r["headroom_bytes"] == r["memory_bytes"] - own
        assert r["measured"] == (r["architecture"] == "sm90")


def test_gpu_memory_gives_one_verdict(capsys) -> None:
    small = run_json(capsys, "llava-1.5-7b", "--preset", "full", "--gpu-memory", "40")
    big = run_json(capsys, "llava-1.5-7b", "--preset", "stage1", "--gpu-memory", "40")
    assert small["fits"] is False and big["fits"] is True
    assert big["gpus"][0]["memory_bytes"] == 40 * 2**30


def test_workload_options_reach_the_estimate(capsys) -> None:
    base = run_json(capsys, "tiny", "--preset", "full", "--dtype", "fp32")
    ckpt = run_json(capsys, "tiny", "--preset", "full", "--dtype", "fp32", "--grad-ckpt", "--optimizer", "sgd")
    sharded = run_json(capsys, "tiny", "--preset", "full", "--gpus", "4", "--sharding", "zero1")
    assert ckpt["workload"]["grad_ckpt"] is True and ckpt["breakdown"]["optimizer_state"] == 0
    assert base["breakdown"]["optimizer_state"] > 0
    assert sharded["workload"]["gpus"] == 4
    text = run_json(capsys, "tiny", "--preset", "stage2", "--images", "0")
    assert text["activations_by_component"]["vision"] == 0


def test_human_output_has_table_and_notes(capsys) -> None:
    assert main(["estimate", "llava-1.5-7b", "--preset", "stage1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "analytic estimate" in out and "activations" in out and "with cache + CUDA context" in out
    assert "The LLM is frozen but keeps" in out
    assert "RTX 4090 24 GB" in out


@pytest.mark.parametrize("args,message", [
    (["--batch", "0"], "batch must be between 1"),
    (["--text-tokens", "-5"], "text_tokens must be between 1"),
    (["--images", "65"], "images must be between 0"),
    (["--gpus", "0"], "gpus must be between 1"),
    (["--gpu-memory", "lots"], "GPU memory must be a number"),
    (["--gpu-memory", "-3"], "GPU memory must be between"),
    (["--dtype", "bf16", "--autocast", "fp16"], "mixes two 16-bit types"),
    (["--train", "nothing_matches_this"], "matches no parameter"),
])
def test_bad_input_is_one_message_and_exit_2(capsys, args: list[str], message: str) -> None:
    assert main(["estimate", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_unknown_model_and_bad_choice_exit_2(capsys) -> None:
    assert main(["estimate", "no-such-model-xyz"]) == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["estimate", "tiny", "--sharding", "zero9"])
    assert exc.value.code == 2


def test_simulate_method_reports_progress_on_stderr(capsys) -> None:
    assert main(["estimate", "tiny", "--preset", "stage1", "--method", "simulate", "--batch", "2", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["method"] == "simulate"
    assert data["peak_bytes"] == sum(data["breakdown"].values())
    assert "%]" in captured.err  # "[ 42.0%] phase" lines, stdout stays pure JSON
    index = index_of(resolve_source("tiny"))
    analytic = estimate(index, resolve(preset("stage1"), index).mask, Workload(batch=2))
    assert abs(data["peak_bytes"] - analytic.peak_bytes) <= 0.02 * analytic.peak_bytes


def test_image_sizes_height_by_width(capsys) -> None:
    """issue 12: LLaVA-NeXT at 336x672 counts 1,752 image tokens, at 672x672 2,928."""
    data = run_json(capsys, "llava-v1.6-mistral-7b", "--train", "@projector", "--image-size", "336x672")
    assert data["image_tokens"]["per_sample"] == 1752
    assert data["details"]["sequence_length"] == 1752 + 64
    assert data["workload"]["image_sizes"] == [[336, 672]] and data["workload"]["images"] == 1
    square = run_json(capsys, "llava-v1.6-mistral-7b", "--train", "@projector", "--image-size", "672")
    assert square["image_tokens"]["per_sample"] == 2928 and square["workload"]["image_size"] == 672
    # one --image-size per image: several images of different sizes per sample
    two = run_json(capsys, "llava-v1.6-mistral-7b", "--train", "@projector", "--image-size", "336x672",
                   "--image-size", "672x672")
    assert two["workload"]["images"] == 2 and two["image_tokens"]["per_sample"] == 1752 + 2928
    assert [i["image_tokens"] for i in two["image_tokens"]["images"]] == [1752, 2928]
    # one size for every image
    three = run_json(capsys, "llava-v1.6-mistral-7b", "--train", "@projector", "--image-size", "336x672",
                     "--images", "3")
    assert three["image_tokens"]["per_sample"] == 3 * 1752


@pytest.mark.parametrize("args,message", [
    (["--image-size", "336x"], "give height x width"),
    (["--image-size", "336x672x3"], "give height x width"),
    (["--image-size", "0x672"], "image_size must be between 1"),
    (["--image-size", "336x672", "--image-size", "672x672", "--images", "3"], "2 image sizes for 3 image"),
    (["--frames", "8"], "does not follow videos"),
])
def test_bad_image_options_are_one_message(capsys, args, message) -> None:
    assert main(["estimate", "llava-v1.6-mistral-7b", "--train", "@projector", *args]) == 2
    assert message in capsys.readouterr().err


def test_what_the_analytic_estimate_does_not_follow_points_to_the_simulation(capsys, tmp_path) -> None:
    assert main(["estimate", "qwen2.5-vl-7b-instruct", "--train", "@projector", "--frames", "8"]) == 2
    err = capsys.readouterr().err
    assert "does not follow videos (frames) yet" in err and "--method simulate" in err
    from tiny_families import _siglip, _text

    path = tmp_path / "aya.json"  # a built-in class freezelab has not checked
    path.write_text(json.dumps({"model_type": "aya_vision", "vision_config": _siglip(56),
                                "text_config": _text("cohere2"), "image_token_index": 200, "downsample_factor": 2}))
    assert main(["estimate", str(path), "--train", "@projector"]) == 2
    assert "does not follow aya_vision yet (a family whose forward freezelab has not modelled)" in \
        capsys.readouterr().err


def test_flops_and_step_time_follow_the_families_and_say_why_not_for_videos(capsys, tmp_path) -> None:
    """A newer family gets its FLOPs and step time like LLaVA; where the analytic model does not follow a
    workload (a video), the simulated estimate still runs and the FLOPs are null with the reason, never an
    undercount."""
    from tiny_families import config

    data = run_json(capsys, "qwen2.5-vl-3b-instruct", "--preset", "stage1", "--image-size", "448x448")
    assert data["image_tokens"]["per_sample"] == 256 and data["peak_bytes"] > 0
    assert data["flops"]["counted"] > 0 and data["step_seconds"] and "flops_not_modelled" not in data
    path = tmp_path / "qwen2_vl.json"
    path.write_text(json.dumps(config("qwen2_vl")))
    video = ("--preset", "stage1", "--image-size", "56x56", "--frames", "2", "--text-tokens", "8",
             "--method", "simulate")
    data = run_json(capsys, str(path), *video)
    assert data["flops"] is None and data["step_seconds"] is None and data["time"] is None
    assert "does not follow videos" in data["flops_not_modelled"]
    assert "--method simulate" in data["flops_not_modelled"]
    assert main(["estimate", str(path), *video]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "step time: not estimated (the analytic estimate does not follow videos" in out
