"""Choices are str enums: a misspelt member is an error where it is written, a misspelt input is one
clear message, and what the tool prints (JSON, text, --help) shows the plain values."""

from __future__ import annotations

import json

import pytest

from freezelab.choices import member
from freezelab.cli import parser
from freezelab.errors import PlanError
from freezelab.plan_files import from_text
from freezelab.plans import Action, Base, Plan, Rule
from freezelab.selectors import SelectorKind, parse
from freezelab.workload import (
    OPTIMIZERS,
    Attention,
    Autocast,
    Dtype,
    Optimizer,
    Sharding,
    Workload,
    WorkloadError,
)


def test_a_workload_holds_members_and_serialises_plain_values():
    w = Workload(dtype="fp32", autocast="bf16", optimizer="adamw-fused", attn="eager", sharding="zero3", gpus=2)
    assert (w.dtype, w.autocast, w.optimizer, w.attn, w.sharding) == (
        Dtype.FP32, Autocast.BF16, Optimizer.ADAMW_FUSED, Attention.EAGER, Sharding.ZERO3)
    assert type(w.optimizer) is Optimizer and type(w.to_dict()["optimizer"]) is str
    assert w.to_dict() == {"batch": 1, "text_tokens": 64, "images": 1, "image_size": None, "dtype": "fp32",
                           "autocast": "bf16", "optimizer": "adamw-fused", "grad_ckpt": False, "attn": "eager",
                           "gpus": 2, "sharding": "zero3", "offload_optimizer": False,
                           "image_sizes": [], "frames": 0}
    assert json.dumps({"o": Optimizer.SGD_MOMENTUM}) == '{"o": "sgd-momentum"}'
    assert f"{Sharding.ZERO3} / {Dtype.BF16}" == "zero3 / bf16"
    assert Workload.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    assert Workload(dtype="bf16") == Workload(dtype=Dtype.BF16) and hash(Workload(dtype="bf16")) == hash(Workload())


def test_a_member_of_another_choice_with_the_same_value_is_read_as_this_one():
    assert Workload(dtype=Autocast.FP16).dtype is Dtype.FP16


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "adamw-fusd", "optimizer must be one of adamw, adamw-fused, sgd, sgd-momentum, adamw-8bit, "
                                "adafactor, paged-adamw, paged-adamw-8bit; got 'adamw-fusd'"),
    ("dtype", "bfloat16", "dtype must be one of bf16, fp16, fp32; got 'bfloat16'"),
    ("autocast", Dtype.FP32, "autocast must be one of none, bf16, fp16; got 'fp32'"),
    ("sharding", None, "sharding must be one of ddp, zero1, zero2, zero3, fsdp; got None"),
    ("attn", 3, "attn must be one of sdpa, eager; got 3"),
])
def test_a_misspelt_choice_is_one_message(field, value, message):
    with pytest.raises(WorkloadError) as err:
        Workload(**{field: value})
    assert str(err.value) == message


def test_a_misspelt_member_is_an_error_where_it_is_written():
    with pytest.raises(AttributeError):
        Optimizer.ADAMW_FUSD  # noqa: B018


def test_member_reads_plain_strings_only():
    assert member(Sharding, "fsdp") is Sharding.FSDP
    assert member(Sharding, "FSDP") is None and member(Sharding, b"fsdp") is None and member(Sharding, None) is None


def test_help_and_choices_show_plain_values(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["estimate", "--help"])
    help_text = capsys.readouterr().out
    listed = "{adamw,adamw-fused,sgd,sgd-momentum,adamw-8bit,adafactor,paged-adamw,paged-adamw-8bit}"
    assert "{" + ",".join(OPTIMIZERS) + "}" == listed
    assert listed in help_text
    assert "{ddp,zero1,zero2,zero3,fsdp}" in help_text and "Sharding." not in help_text
    args = parser().parse_args(["estimate", "tiny", "--train", "@projector", "--freeze", "*.bias"])
    assert args.rules == [(Action.TRAIN, "@projector"), (Action.FREEZE, "*.bias")]
    assert (args.optimizer, args.sharding, args.autocast) == ("adamw", "ddp", "none")


def test_plan_actions_and_bases_are_members():
    plan = from_text("base trainable\nfreeze @vision\ntrain *.bias")
    assert plan.base is Base.TRAINABLE and [r.action for r in plan.rules] == [Action.FREEZE, Action.TRAIN]
    assert Plan(rules=(Rule("freeze", "@llm"),)).effective_base is Base.TRAINABLE
    assert plan.to_dict() == {"schema": "freezelab.plan/2", "base": "trainable", "preset": None,
                              "rules": [{"action": "freeze", "selector": "@vision"},
                                        {"action": "train", "selector": "*.bias"}],
                              "lora": {"r": 8, "alpha": 8, "dropout": 0.0, "dora": False},
                              "quant": {"bits": "none", "type": "nf4", "double_quant": True}}
    assert plan.to_text() == "base trainable\nfreeze @vision\ntrain *.bias"
    with pytest.raises(PlanError, match=r"^rule action must be train, freeze or lora, got 'trian'$"):
        Rule("trian", "@llm")
    with pytest.raises(PlanError, match=r"^plan base must be frozen or trainable, got 'Frozen'$"):
        Plan("Frozen")


def test_selector_kinds():
    assert [parse(s).kind for s in ("@llm", "@llm.layers[-2:]", "*.bias", "re:bias$")] == [
        SelectorKind.ALIAS, SelectorKind.LAYERS, SelectorKind.GLOB, SelectorKind.REGEX]
