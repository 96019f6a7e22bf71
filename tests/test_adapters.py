"""Adapter rules in plans: which Linear layers they reach, their counts on the tiny model (hand-computed), the
ordering rules, reading and writing them, and the PEFT config they turn into."""

from __future__ import annotations

import json
import re

import pytest
import torch

from freezelab.adapters import AdapterError, linears
from freezelab.anatomy import summary, tree
from freezelab.errors import PlanError
from freezelab.lora import LoraSettings, Quantization
from freezelab.plan_files import from_json, from_text
from freezelab.plans import Plan, Rule, append_rule, resolve
from freezelab.peft_targets import lora_kwargs, module_pattern

# tiny: LLM hidden 64, MLP 128, 4 heads of 16 with 2 kv heads (k, v: 32 outputs), 4 layers;
# CLIP hidden 32, MLP 64, 3 layers; projector 32 -> 64 -> 64.
LLM_LAYER = 64 + 64 + 64 + 32 + 64 + 32 + 64 + 64 + 64 + 128 + 64 + 128 + 128 + 64  # sum of in + out of 7 Linears
LLM_OUT = 64 + 32 + 32 + 64 + 128 + 128 + 64                                     # DoRA magnitudes per layer
VISION_LAYER = 4 * (32 + 32) + (32 + 64) + (64 + 32)
PROJECTOR = (32 + 64) + (64 + 64)


def plan(text):
    return from_text(text)


def counts(index, p):
    res = resolve(p, index)
    return summary(*res.adapted(index))


def test_adapter_counts_on_tiny_by_hand(tiny_index):
    assert LLM_LAYER == 1024 and VISION_LAYER == 448
    base = tiny_index.total_params
    s = counts(tiny_index, plan("train @projector\nlora @llm"))
    assert s["adapter_params"] == 8 * 4 * LLM_LAYER == 32_768
    assert s["trainable_params"] == 32_768 + (32 * 64 + 64) + (64 * 64 + 64) and s["total_params"] == base + 32_768 == s["base_params"] + 32_768
    dora = counts(tiny_index, plan("adapter r=4 dora=true\nlora @llm.layers[-1:]"))
    assert dora["adapter_params"] == 4 * LLM_LAYER + LLM_OUT == 4_608
    both = counts(tiny_index, plan("lora @vision r=2\nlora @projector r=16\nlora @llm.layers[0]"))
    assert both["adapter_params"] == 2 * 3 * VISION_LAYER + 16 * PROJECTOR + 8 * LLM_LAYER
    assert both["components"]["vision"]["trainable"] == 2 * 3 * VISION_LAYER


def test_llm_leaves_out_the_head_unless_named(tiny_index):
    with_llm = resolve(plan("lora @llm"), tiny_index).adapters
    assert "lm_head" not in {a.path for a in with_llm.layers} and len(with_llm.layers) == 28
    head = resolve(plan("lora @lm_head"), tiny_index).adapters
    assert [a.path for a in head.layers] == ["lm_head"] and head.params == 8 * (64 + 512)
    with pytest.raises(AdapterError, match=r"only Linear layer it reaches is the output head .*lora @lm_head"):
        resolve(plan("lora lm_head"), tiny_index)


@pytest.mark.parametrize("text,message", [
    ("lora @embeddings", r"rule 1 \(lora @embeddings\): it selects the weight of no nn.Linear layer .*Embedding"),
    ("lora *.bias", r"only parameters of .*Linear biases"),
    ("train @projector\nlora @projector", r"rule 2 .* 2 of the Linear layers it adapts train in full already .*rule 1 "
                                          r"\(train @projector\)"),
    ("freeze @vision\nlora @llm.layers[-1:]", r"made trainable by the plan's base \(trainable\)"),
    ("lora @llm\ntrain @llm.layers[-1]", r"rule 2 \(train @llm.layers\[-1\]\) trains the weights of 7 Linear layers "
                                        r"that rule 1 \(lora @llm\) gives adapters"),
])
def test_adapter_rule_errors(tiny_index, text, message):
    with pytest.raises(AdapterError, match=message):
        resolve(plan(text), tiny_index)


def test_rules_in_order(tiny_index):
    # trained, then frozen again, then adapted: fine; a later freeze changes no adapter; biases stay trainable
    p = plan("train @llm\nfreeze @llm\nlora @llm.layers[-1:]\nfreeze @llm.layers[-1:]\ntrain *.bias")
    res = resolve(p, tiny_index)
    assert len(res.adapters.layers) == 7
    trained = {tiny_index.params[i].name for i, on in enumerate(res.mask) if on}
    assert trained and all(n.endswith(".bias") for n in trained)
    # the last lora rule reaching a layer sets its rank
    ranks = resolve(plan("lora @llm r=4\nlora *q_proj* r=2 alpha=6"), tiny_index).adapters
    got = {a.path.rsplit(".", 2)[-1]: (a.r, a.alpha) for a in ranks.layers if ".layers.0." in a.path}
    assert got["q_proj"] == (2, 6) and got["k_proj"] == (4, 8)


def test_quantized_base_is_every_frozen_llm_linear_but_the_head(tiny_index):
    res = resolve(plan("quant 4bit\ntrain @projector\nlora @llm.layers[:2]\ntrain @llm.layers[3]"), tiny_index)
    names = {tiny_index.params[i].name for i in res.adapters.quantized}
    assert len(names) == 3 * 7  # layers 0-2 (adapted or not); layer 3 trains; no head, vision or projector
    assert all(".language_model.layers." in n and ".layers.3." not in n for n in names)


def test_text_and_json_round_trip_with_adapters():
    text = ("base frozen\nadapter r=128 alpha=256 dropout=0.05 dora=true\nquant 4bit type=fp4 double=false\n"
            "train @projector\nlora @llm\nlora re:vision.*(q|v)_proj r=16 alpha=32")
    p = from_text(text)
    assert p.lora == LoraSettings(128, 256, 0.05, True)
    assert p.quant == Quantization("4bit", "fp4", False)
    assert p.rules[2] == Rule("lora", "re:vision.*(q|v)_proj", 16, 32)
    assert p.to_text() == text
    assert from_text(p.to_text()) == p and from_json(p.to_json()) == p
    data = json.loads(p.to_json())
    assert data["schema"] == "freezelab.plan/2" and data["rules"][2] == {"action": "lora",
                                                                         "selector": "re:vision.*(q|v)_proj",
                                                                         "r": 16, "alpha": 32}


@pytest.mark.parametrize("text,message", [
    ("adapter r=0", "line 1: LoRA rank r must be a whole number"),
    ("adapter rank=4", "line 1: expected r=... alpha=... dropout=... dora=..."),
    ("adapter dora=maybe", "dora must be true or false"),
    ("quant 3bit", "quantization must be none, 8bit or 4bit"),
    ("train @llm r=4", "only a lora rule takes r= and alpha="),
    ("lora @llm r=1.5", "a lora rule.s r must be a whole number from 1 to 8192, got 1.5"),
])
def test_bad_adapter_lines(text, message):
    with pytest.raises(PlanError, match=message):
        from_text(text)


def test_append_rule_keeps_lora_rules_and_what_they_depend_on(tiny_index):
    p = Plan(rules=(Rule("freeze", "@all"),))  # base trainable, everything frozen by rule 1
    p = append_rule(p, tiny_index, "lora", "@llm")
    assert [str(r) for r in p.rules] == ["freeze @all", "lora @llm"]
    # `freeze @all` again would cover rule 1, but rule 1 is what makes the adapted weights frozen: kept
    p2 = append_rule(p, tiny_index, "freeze", "@all")
    assert [str(r) for r in p2.rules] == ["freeze @all", "lora @llm"]
    assert resolve(p2, tiny_index).adapters == resolve(p, tiny_index).adapters
    p3 = append_rule(p, tiny_index, "train", "@projector")
    assert [str(r) for r in p3.rules] == ["freeze @all", "lora @llm", "train @projector"]
    with pytest.raises(AdapterError):
        append_rule(p, tiny_index, "train", "@llm")


def test_tree_shows_adapters_under_their_linear(tiny_index):
    res = resolve(plan("adapter r=4 dora=true\nlora @llm.layers[-1:]"), tiny_index)
    rows = {r.path: r for r in tree(*res.adapted(tiny_index))}
    q = "model.language_model.layers.3.self_attn.q_proj"
    assert rows[q].type == "lora.Linear" and rows[q].adapter == 4 * 128 + 64
    assert rows[q].total == 64 * 64 + 4 * 128 + 64 and rows[q].trainable == 4 * 128 + 64 and rows[q].state == "partial"
    assert rows[q + ".lora_A"].total == 4 * 64 and rows[q + ".lora_A"].depth == rows[q].depth + 1
    assert rows[q + ".lora_B"].trainable == 64 * 4 and rows[q + ".lora_magnitude_vector"].total == 64
    assert rows[q + ".lora_A"].dtype == "float32"
    assert rows[""].adapter == 4 * LLM_LAYER + LLM_OUT


def test_target_pattern_matches_exactly_the_adapted_layers(tiny_index, tiny_model):
    names = [n for n, _ in tiny_model.named_modules()]
    for text in ("lora @llm", "lora @llm.layers[1:3]\nlora @projector", "lora re:q_proj\\.weight",
                 "lora @vision r=4\nlora @llm.layers[-1]\nlora @lm_head"):
        res = resolve(plan(text), tiny_index)
        want = {a.path for a in res.adapters.layers}
        kwargs = lora_kwargs(tiny_index, res.adapters)
        assert {n for n in names if re.fullmatch(kwargs["target_modules"], n)} == want, text
    kwargs = lora_kwargs(tiny_index, resolve(plan("lora @llm\nlora *v_proj* r=4 alpha=2"), tiny_index).adapters)
    (key, r), = kwargs["rank_pattern"].items()
    # PEFT's get_pattern_key matching: re.match(rf"(.*\.)?({key})$", name)
    assert r == 4 and {n for n in names if re.match(rf"(.*\.)?({key})$", n)} == {
        n for n in names if n.endswith("v_proj")}
    assert module_pattern(tiny_index, ["lm_head"]) == "lm_head"


def test_every_index_linear_is_a_torch_linear(tiny_index, tiny_model):
    """The index records module class names; "Linear" must be exactly torch.nn.Linear, as PEFT targets it."""
    want = {n for n, m in tiny_model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {lin.path for lin in linears(tiny_index)} == want
