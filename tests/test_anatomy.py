"""Anatomy: components found by object, exact counts from config dimensions, the tree, tied weights."""

from __future__ import annotations

import json

import pytest

from freezelab.anatomy import component_counts, count, summary, tree
from freezelab.index import ModelIndex, build_index
from freezelab.models import build
from freezelab.plans import Plan, apply, preset
from freezelab.sources import TINY_CONFIG

CFG = json.loads(TINY_CONFIG.read_text())
V, T = CFG["vision_config"], CFG["text_config"]


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def clip_layer(h: int, inter: int) -> int:
    return 4 * linear(h, h) + linear(h, inter) + linear(inter, h) + 2 * 2 * h


def llama_layer(h: int, inter: int, heads: int, kv: int) -> int:
    kv_dim = h // heads * kv
    return 2 * h * h + 2 * h * kv_dim + 3 * h * inter + 2 * h


def expected_tiny() -> dict[str, int]:
    h, p, s = V["hidden_size"], V["patch_size"], V["image_size"]
    embeddings = h + 3 * p * p * h + ((s // p) ** 2 + 1) * h
    vision = embeddings + 2 * h + V["num_hidden_layers"] * clip_layer(h, V["intermediate_size"]) + 2 * h
    th, vocab = T["hidden_size"], T["vocab_size"]
    projector = linear(h, th) + linear(th, th)
    layers = T["num_hidden_layers"] * llama_layer(th, T["intermediate_size"], T["num_attention_heads"],
                                                  T["num_key_value_heads"])
    llm = vocab * th + layers + th + vocab * th
    return {"vision": vision, "projector": projector, "llm": llm, "lm_head": vocab * th,
            "embeddings": vocab * th, "layer": llama_layer(th, T["intermediate_size"], T["num_attention_heads"],
                                                           T["num_key_value_heads"])}


def test_tiny_counts_exact(tiny_index: ModelIndex):
    exp = expected_tiny()
    got = component_counts(tiny_index, [True] * len(tiny_index.params))
    for key in ("vision", "projector", "llm", "lm_head", "embeddings"):
        assert got[key].total == exp[key], key
    assert tiny_index.total_params == exp["vision"] + exp["projector"] + exp["llm"]


def test_components_and_layers_found_by_object(tiny_index: ModelIndex):
    assert len(tiny_index.layers["vision"]) == V["num_hidden_layers"]
    assert len(tiny_index.layers["llm"]) == T["num_hidden_layers"]
    layer3 = [p for p in tiny_index.params if p.component == "llm" and p.layer == 3]
    assert sum(p.numel for p in layer3) == expected_tiny()["layer"]
    assert {p.component for p in tiny_index.params} == {"vision", "projector", "llm"}
    assert tiny_index.roots["lm_head"] == ["lm_head"]
    assert all(p.name.startswith("model.multi_modal_projector.") for p in tiny_index.params
               if p.component == "projector")


def test_tree_rows_consistent(tiny_index: ModelIndex):
    mask = [p.component == "projector" for p in tiny_index.params]
    rows = {r.path: r for r in tree(tiny_index, mask)}
    root = rows[""]
    assert root.total == tiny_index.total_params
    assert root.trainable == expected_tiny()["projector"] and root.state == "partial"
    assert rows["model.multi_modal_projector"].state == "trainable"
    assert rows["model.vision_tower"].state == "frozen"
    # every parent's total is the sum of its children's plus its own (no tied weights here)
    for r in rows.values():
        info = tiny_index.module_by_path[r.path]
        kids = [rows[c] for c in info.children]
        own_trainable = sum(tiny_index.numels[i] for i in info.own if mask[i])
        assert r.total == r.own + sum(k.total for k in kids)
        assert r.trainable == own_trainable + sum(k.trainable for k in kids)
    limited = tree(tiny_index, mask, depth=1)
    assert {r.depth for r in limited} == {0, 1}


def test_counts_equal_requires_grad_sum_on_real_tiny(tiny_source, tiny_index):
    model = build(tiny_source, device="cpu", dtype="fp32")
    for name in ("stage1", "stage2", "full", "llm", "vision-projector", "last-2", "lm-head", "frozen"):
        res = apply(preset(name), model, tiny_index)
        expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert count(tiny_index, res.mask).trainable == expected, name


def test_dead_vision_params(tiny_index: ModelIndex):
    last = V["num_hidden_layers"] - 1  # vision_feature_layer=-2: the last layer feeds nothing
    dead_layers = {tiny_index.params[tiny_index.by_name[n]].layer for n in tiny_index.dead}
    assert dead_layers == {last, None}
    assert "model.vision_tower.post_layernorm.weight" in tiny_index.dead
    assert not any(".layers.0." in n for n in tiny_index.dead)


def test_index_round_trips_through_json(tiny_index: ModelIndex):
    again = ModelIndex.from_dict(json.loads(json.dumps(tiny_index.to_dict())))
    assert again.params == tiny_index.params and again.modules == tiny_index.modules
    assert again.roots == tiny_index.roots and again.dead == tiny_index.dead


@pytest.fixture(scope="module")
def tied_model():
    cfg = dict(CFG, tie_word_embeddings=True)
    cfg["text_config"] = dict(T, tie_word_embeddings=True)
    from freezelab.sources import Source
    src = Source(spec="tiny-tied", kind="config", name="tiny-tied", config=cfg, model_type="llava")
    model = build(src, device="cpu", dtype="fp32")
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return model, build_index(model, "tiny-tied", meta=False)


def test_tied_lm_head_counts_once(tied_model):
    model, index = tied_model
    exp = expected_tiny()
    assert index.total_params == sum(p.numel() for p in model.parameters())
    assert index.total_params == exp["vision"] + exp["projector"] + exp["llm"] - exp["lm_head"]
    tied = index.tied
    assert len(tied) == 1 and set(tied[0].names) == {"model.language_model.embed_tokens.weight", "lm_head.weight"}
    rows = {r.path: r for r in tree(index, [False] * len(index.params))}
    assert "embed_tokens.weight" in rows["lm_head"].tied
    assert "lm_head.weight" in rows["model.language_model.embed_tokens"].tied
    # freezing one freezes the other: training lm_head trains the embeddings too
    res = apply(Plan(rules=()).then("train", "@lm_head"), model, index)
    assert model.get_input_embeddings().weight.requires_grad
    assert count(index, res.mask).trainable == exp["lm_head"]
    assert any("tied" in w for w in res.warnings)
    comps = component_counts(index, res.mask)
    assert comps["lm_head"].trainable == comps["embeddings"].trainable == exp["lm_head"]


def test_summary_shape(tiny_index):
    s = summary(tiny_index, [False] * len(tiny_index.params))
    assert s["trainable_params"] == 0 and s["frozen_params"] == s["total_params"] == tiny_index.total_params
    assert set(s["components"]) == {"vision", "projector", "llm", "lm_head", "embeddings"}
