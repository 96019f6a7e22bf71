"""The DeepSpeed config and the FSDP2 launch line: the fields a workload sets, when each is exact, and the
launch line read back through freezelab's own command line giving exactly the plan and the workload."""

from __future__ import annotations

import json
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezelab.cli import main
from freezelab.exports import export, export_all
from freezelab.exports.fsdp_launch import read_back
from freezelab.plans import Plan, Rule, preset, resolve
from freezelab.workload import Workload

SELECTORS = ["@projector", "@llm.layers[-2:]", "@vision", "*.bias", "@lm_head", "re:layers\\.(0|3)\\.", "@all"]


@pytest.mark.parametrize(("sharding", "stage"), [("ddp", 0), ("zero1", 1), ("zero2", 2), ("zero3", 3)])
def test_deepspeed_config_carries_the_workload(tiny_index, sharding, stage):
    w = Workload(batch=4, gpus=8, sharding=sharding, offload_optimizer=stage > 0)
    ex = export(preset("stage2"), tiny_index, "deepspeed", workload=w)
    cfg = json.loads(ex.text)
    assert ex.exact and ex.language == "json" and ex.differs == 0
    assert cfg["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in cfg["zero_optimization"]) == (stage > 0)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_clipping"] == 1.0
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["optimizer"]["type"] == "AdamW"
    assert "requires_grad" in ex.note and f"ZeRO-{stage} on 8 GPU(s)" in ex.note


@pytest.mark.parametrize(("workload", "gap"), [
    (Workload(gpus=4, sharding="fsdp"), "fsdp is PyTorch FSDP2"),
    (Workload(dtype="fp32", autocast="bf16", sharding="zero2"), "fp32 weights with bf16 autocast"),
    (Workload(optimizer="adafactor", sharding="zero2"), "adafactor is not built by DeepSpeed"),
])
def test_deepspeed_config_says_what_deepspeed_cannot_run(tiny_index, workload, gap):
    ex = export(preset("stage1"), tiny_index, "deepspeed", workload=workload)
    assert not ex.exact and gap in ex.note and ex.note.startswith("closest config: ")
    cfg = json.loads(ex.text)
    assert ("optimizer" in cfg) == (workload.optimizer != "adafactor")


def test_deepspeed_fp16_and_fp32(tiny_index):
    fp16 = json.loads(export(Plan(), tiny_index, "deepspeed", workload=Workload(dtype="fp16")).text)
    fp32 = json.loads(export(Plan(), tiny_index, "deepspeed", workload=Workload(dtype="fp32")).text)
    assert (fp16["fp16"], fp16["bf16"]) == ({"enabled": True}, {"enabled": False})
    assert (fp32["fp16"], fp32["bf16"]) == ({"enabled": False}, {"enabled": False})


def _argv(text: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if not x.startswith("#")]
    return shlex.split(line)


def test_fsdp_line_for_a_preset_with_extra_rules(tiny_index):
    plan = preset("last-2").then("freeze", "*.bias")
    w = Workload(batch=2, gpus=8, grad_ckpt=True, offload_optimizer=True, sharding="zero3")
    ex = export(plan, tiny_index, "fsdp", workload=w)
    argv = _argv(ex.text)
    assert argv[:5] == ["torchrun", "--nproc_per_node", "8", "-m", "freezelab"]
    assert argv[5:9] == ["step", "tiny", "--preset", "last-2"] and argv[9:11] == ["--freeze", "*.bias"]
    assert argv[-4:] == ["--device", "cuda", "--sharding", "fsdp"]
    assert {"--batch", "2", "--grad-ckpt", "--offload-optimizer"} <= set(argv)
    mask, back = read_back(argv, tiny_index)
    assert ex.exact and mask == resolve(plan, tiny_index).mask and back == w.with_(sharding="fsdp")
    assert "fsdp_transformer_layer_cls_to_wrap: CLIPEncoderLayer,LlamaDecoderLayer" in ex.text
    assert "fsdp_offload_params: true" in ex.text


def test_fsdp_line_makes_an_explicit_base_explicit(tiny_index):
    plan = Plan("trainable", (Rule("train", "@projector"), Rule("freeze", "@vision")))
    argv = _argv(export(plan, tiny_index, "fsdp", workload=Workload(gpus=2)).text)
    assert argv[7:11] == ["--train", "@all", "--train", "@projector"]
    assert read_back(argv, tiny_index)[0] == resolve(plan, tiny_index).mask


plans = st.builds(
    lambda base, rules: Plan(base, tuple(Rule(a, s) for a, s in rules)),
    st.sampled_from([None, "frozen", "trainable"]),
    st.lists(st.tuples(st.sampled_from(["train", "freeze"]), st.sampled_from(SELECTORS)), max_size=5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans)
def test_fsdp_line_reads_back_as_the_plan(tiny_index, plan):
    ex = export_all(plan, tiny_index, workload=Workload(gpus=4))["fsdp"]
    mask, _ = read_back(_argv(ex.text), tiny_index)
    assert ex.exact and mask == resolve(plan, tiny_index).mask


def test_export_command_takes_the_workload(capsys):
    assert main(["export", "llava-1.5-7b", "--preset", "stage2", "--format", "deepspeed", "--gpus", "8",
                 "--sharding", "zero3", "--offload-optimizer", "--batch", "4"]) == 0
    captured = capsys.readouterr()
    cfg = json.loads(captured.out)
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                        "stage3_gather_16bit_weights_on_model_save": True}
    assert captured.err.startswith("exact: DeepSpeed ZeRO-3 on 8 GPU(s) for llava-1.5-7b, trains 6,759,919,616")
