"""Freeze-aware FLOPs of one training step (freezelab.compute.flops) on the tiny LLaVA.

Expected numbers are written out here from the config's sizes with FlopCounterMode's
conventions (a matmul of m x k by k x n is 2·m·k·n; fused attention 4·b·h·s²·d forward and
10·b·h·s²·d backward), and the simulated step's FlopCounterMode count is compared with the
analytic one exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freezelab.compute.flops import Group, Split, step_flops
from freezelab.models import index_of
from freezelab.plans import Plan, Rule, preset, resolve
from freezelab.sources import resolve as resolve_source
from freezelab.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
TINY = json.loads((ROOT / "assets" / "tiny" / "config.json").read_text())
V, T = TINY["vision_config"], TINY["text_config"]
VH, VI, VL, VHEADS = V["hidden_size"], V["intermediate_size"], V["num_hidden_layers"], V["num_attention_heads"]
TH, TI, TL, VOCAB = T["hidden_size"], T["intermediate_size"], T["num_hidden_layers"], T["vocab_size"]
HEADS, KV_HEADS = T["num_attention_heads"], T["num_key_value_heads"]
HEAD_DIM, KV = TH // HEADS, T["num_key_value_heads"] * TH // HEADS
PATCH = V["patch_size"]
PATCHES = (V["image_size"] // PATCH) ** 2          # 16 patches, + CLS in the tower, CLS dropped after it
B, TEXT = 2, 16
SEQ = PATCHES + TEXT                               # LLM tokens per sample: 16 image + 16 text
N, VROWS = B * SEQ, B * (PATCHES + 1)              # LLM rows, vision rows (with CLS)
WORKLOAD = Workload(batch=B, text_tokens=TEXT)


def mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


# forward FLOPs of each piece, by hand
CONV = mm(B * PATCHES, 3 * PATCH * PATCH, VH)
V_LINEARS = 4 * mm(VROWS, VH, VH) + mm(VROWS, VH, VI) + mm(VROWS, VI, VH)
V_ATTENTION = 4 * B * VHEADS * (PATCHES + 1) ** 2 * (VH // VHEADS)
PROJECTOR = mm(B * PATCHES, VH, TH) + mm(B * PATCHES, TH, TH)
L_LINEARS = 2 * mm(N, TH, TH) + 2 * mm(N, TH, KV) + 3 * mm(N, TH, TI)   # q, o; k, v; gate, up, down
L_DOWN = mm(N, TI, TH)
L_ATTENTION = 4 * B * HEADS * SEQ ** 2 * HEAD_DIM
L_ATTENTION_BWD = 10 * B * HEADS * SEQ ** 2 * HEAD_DIM
HEAD = mm(N, TH, VOCAB)
FORWARD = CONV + VL * (V_LINEARS + V_ATTENTION) + PROJECTOR + TL * (L_LINEARS + L_ATTENTION) + HEAD


@pytest.fixture(scope="module")
def tiny():
    return index_of(resolve_source("tiny"))


def flops(index, plan, workload=WORKLOAD):
    return step_flops(index, resolve(plan, index).mask, workload)


def test_forward_counts_every_layer_that_runs(tiny):
    f = flops(tiny, preset("frozen"))
    assert f.forward == FORWARD == 28_656_384
    # the last vision layer runs although the projector reads the layer before it
    assert f.by_component[Group.VISION].forward == CONV + VL * (V_LINEARS + V_ATTENTION)
    assert f.backward == 0 and f.optimizer == 0


def test_projector_only_still_runs_the_llm_backward_for_the_input_gradient(tiny):
    f = flops(tiny, preset("stage1"))
    llm_layer = next(s.split for s in f.by_stage if s.name == "llm.layers.0")
    assert llm_layer == Split(L_LINEARS + L_ATTENTION, L_LINEARS + L_ATTENTION_BWD, 0, 0)
    assert f.by_component[Group.VISION].backward == 0            # upstream of everything trainable
    assert f.by_component[Group.LM_HEAD] == Split(HEAD, HEAD, 0, 0)  # frozen head: input gradient only
    # linear_1 reads frozen features: weight gradient only; linear_2 both
    assert f.by_component[Group.PROJECTOR] == Split(
        PROJECTOR, mm(B * PATCHES, TH, TH), PROJECTOR, 0)
    assert f.backward == TL * (L_LINEARS + L_ATTENTION_BWD) + HEAD + mm(B * PATCHES, TH, TH) + PROJECTOR


def test_stage2_adds_only_the_weight_gradients(tiny):
    s1, s2 = flops(tiny, preset("stage1")), flops(tiny, preset("stage2"))
    assert s2.split.backward_input == s1.split.backward_input
    assert s2.split.backward_weight - s1.split.backward_weight == TL * L_LINEARS + HEAD


def test_nothing_before_the_first_trainable_layer_runs_backward(tiny):
    f = flops(tiny, preset("last-2"))
    backward = {s.name: s.split.backward for s in f.by_stage}
    assert backward["llm.layers.0"] == backward["llm.layers.1"] == 0
    assert backward["llm.layers.2"] == backward["llm.layers.3"] == 2 * L_LINEARS + L_ATTENTION_BWD
    assert f.by_component[Group.PROJECTOR].backward == f.by_component[Group.VISION].backward == 0


def test_checkpointing_replays_each_layer_up_to_its_last_linear(tiny):
    plain = flops(tiny, preset("stage2"))
    ckpt = flops(tiny, preset("stage2"), WORKLOAD.with_(grad_ckpt=True))
    layer = next(s.split for s in ckpt.by_stage if s.name == "llm.layers.1")
    assert layer.recompute == L_LINEARS + L_ATTENTION - L_DOWN
    # the input-embedding hooks make the frozen vision tower run backward (input gradients) and replay too
    used = VL - 1   # vision_feature_layer -2: the last layer gets no gradient
    vision = ckpt.by_component[Group.VISION]
    assert vision.recompute == used * (V_LINEARS + V_ATTENTION - mm(VROWS, VI, VH))
    assert plain.by_component[Group.VISION].backward == 0
    assert ckpt.forward == plain.forward


def test_eager_attention_backward_runs_only_the_products_it_needs(tiny):
    eager = WORKLOAD.with_(attn="eager")
    f = flops(tiny, preset("stage1"), eager)
    unit = 2 * B * HEADS * SEQ ** 2 * HEAD_DIM
    assert f.attention.forward == TL * 2 * unit + VL * V_ATTENTION   # the vision tower's too
    assert f.attention.backward_input == TL * 4 * unit               # dP, dV, dQ, dK


def test_fp32_attention_with_fewer_kv_heads_runs_the_math_kernel(tiny):
    """transformers passes the tiny model's 2 kv heads to SDPA with enable_gqa (no mask), which the
    memory-efficient kernel does not take (PyTorch 2.11 / 2.13 sdp_utils.cpp: its dense checks refuse
    grouped-query heads; flash takes no fp32), so fp32 attention runs the math composite: eager's four
    backward products, not the efficient kernel's 10·b·h·s²·d."""
    f = flops(tiny, preset("stage1"), WORKLOAD.with_(dtype="fp32"))
    eager = flops(tiny, preset("stage1"), WORKLOAD.with_(dtype="fp32", attn="eager"))
    unit = 2 * B * HEADS * SEQ ** 2 * HEAD_DIM
    assert f.attention.backward_input == eager.attention.backward_input == TL * 4 * unit


def test_a_mask_for_another_model_is_refused(tiny):
    from freezelab.memory.analytic import EstimateError

    with pytest.raises(EstimateError):
        step_flops(tiny, [True], WORKLOAD)


def test_optimizer_work_follows_the_trainable_elements_and_sharding(tiny):
    f = flops(tiny, preset("stage1"))
    trainable = sum(p.numel for p, on in zip(tiny.params, resolve(preset("stage1"), tiny).mask) if on)
    assert f.optimizer == 14 * trainable
    assert f.traffic.optimizer == 9 * 2 * trainable               # foreach AdamW, bf16
    sharded = flops(tiny, preset("stage1"), WORKLOAD.with_(gpus=4, sharding="zero2"))
    assert sharded.traffic.optimizer == 9 * 2 * -(-trainable // 4)
    assert sharded.counted == f.counted                           # batch is per GPU


# -- the simulated step's FlopCounterMode count equals the analytic count ----------------------

CASES = [
    ("llava", "stage1", {"grad_ckpt": True}),
    ("llava", "last-2", {"attn": "eager"}),
    ("next", "stage2", {"images": 2, "grad_ckpt": True}),
    ("onevision", "vision-projector", {"dtype": "fp32", "autocast": "bf16"}),
    ("llava", "stage1", {"dtype": "fp32"}),
    ("vipllava", "lm-head", {"grad_ckpt": True}),
]


@pytest.mark.parametrize(("kind", "plan", "changes"), CASES)
def test_simulated_flop_counter_equals_analytic(tmp_path, kind, plan, changes):
    import tiny_configs

    from freezelab.memory.simulate import simulate_step
    from freezelab.models import hf_config

    source = resolve_source(str(tiny_configs.write(tmp_path, kind)))
    index = index_of(source)
    res = resolve(preset(plan), index)
    w = WORKLOAD.with_(**changes)
    analytic = step_flops(index, res.mask, w)
    counted = simulate_step(hf_config(source), res.trainable_names(index), w).details["flops"]
    assert (counted["forward"], counted["backward"]) == (analytic.forward, analytic.backward)
    assert {g: {"forward": s.forward, "backward": s.backward} for g, s in analytic.by_component.items()
            if s.total} == counted["by_component"]


def test_a_rule_that_trains_one_projection_runs_backward_from_there_only(tiny):
    plan = Plan(rules=(Rule("train", "language_model.layers.3.mlp.down_proj"),))
    f = flops(tiny, plan)
    layer3 = next(s.split for s in f.by_stage if s.name == "llm.layers.3")
    assert layer3 == Split(L_LINEARS + L_ATTENTION, 0, L_DOWN, 0)   # down_proj's input is frozen-side


def test_notes_say_where_the_backward_runs(tiny):
    from freezelab.compute.notes import explain

    notes = explain(flops(tiny, preset("stage1")))
    assert notes[0].startswith("One step runs 57.6 MFLOP of matmul FLOPs: forward 28.7 MFLOP, backward 29.0 MFLOP")
    assert notes[1].startswith(f"{TL} LLM layers and lm_head train no weights but still run a backward")
    assert notes[2].startswith(f"{VL - 1} vision layers and the patch embedding run forward only")
    assert notes[3].startswith("1 vision layer after the one the projector reads runs forward only")
    assert explain(flops(tiny, preset("frozen")))[0].endswith("so no backward runs.")


def test_compute_chart_stacks_each_component_by_part(tiny):
    from freezelab.charts import compute_breakdown

    f = flops(tiny, preset("stage1"), WORKLOAD.with_(grad_ckpt=True))
    fig = compute_breakdown(f)
    bars = {bar.name: dict(zip(bar.y, bar.x)) for bar in fig.data}
    assert set(bars) == {"forward", "backward: input gradients", "backward: weight gradients",
                         "recomputed forward (checkpointing)"}
    assert bars["forward"]["language model"] == pytest.approx(TL * (L_LINEARS + L_ATTENTION) / 1e12)
    assert bars["backward: weight gradients"]["language model"] == 0
    assert bars["backward: weight gradients"]["projector"] == pytest.approx(PROJECTOR / 1e12)
