"""Selectors: aliases, layer slices, segment globs, regular expressions, and their failures."""

from __future__ import annotations

import pytest

from freezelab.errors import SelectorError
from freezelab.selectors import parse, reach, select


def names(index, sel):
    return {index.params[i].name for i in select(index, sel)}


def test_aliases_partition(tiny_index):
    n = len(tiny_index.params)
    v, p, l = (set(select(tiny_index, a)) for a in ("@vision", "@projector", "@llm"))
    assert v | p | l == set(range(n)) and not (v & p or v & l or p & l)
    assert set(select(tiny_index, "@all")) == set(range(n))
    assert names(tiny_index, "@lm_head") == {"lm_head.weight"}
    assert names(tiny_index, "@embeddings") == {"model.language_model.embed_tokens.weight"}
    assert set(select(tiny_index, "@lm_head")) <= l and set(select(tiny_index, "@embeddings")) <= l


@pytest.mark.parametrize("sel,layers", [
    ("@llm.layers[-2:]", {2, 3}), ("@llm.layers[0:1]", {0}), ("@llm.layers[::2]", {0, 2}),
    ("@llm.layers[3]", {3}), ("@llm.layers[-1]", {3}), ("@vision.layers[0:2]", {0, 1}),
    ("@llm.layers[ 1 : 3 ]", {1, 2}),
])
def test_layer_slices(tiny_index, sel, layers):
    tower = "llm" if sel.startswith("@llm") else "vision"
    got = {tiny_index.params[i].layer for i in select(tiny_index, sel)}
    assert got == layers
    assert all(tiny_index.params[i].component == tower for i in select(tiny_index, sel))


def test_segment_glob_does_not_match_prefix_numbers(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    hit = names(index, "language_model.layers.1")
    assert hit and all(".layers.1." in n for n in hit)
    assert not any(".layers.10." in n or ".layers.19." in n for n in hit)


@pytest.mark.parametrize("sel,expect", [
    ("lm_head", {"lm_head.weight"}),
    ("multi_modal_projector.linear_?", {"model.multi_modal_projector.linear_1.weight",
                                        "model.multi_modal_projector.linear_1.bias",
                                        "model.multi_modal_projector.linear_2.weight",
                                        "model.multi_modal_projector.linear_2.bias"}),
    ("linear_1.bias", {"model.multi_modal_projector.linear_1.bias"}),
    ("language_model.**.post_attention_layernorm", {f"model.language_model.layers.{i}.post_attention_layernorm.weight"
                                                    for i in range(4)}),
    ("language_model.layers.[13].mlp.down_proj", {"model.language_model.layers.1.mlp.down_proj.weight",
                                                  "model.language_model.layers.3.mlp.down_proj.weight"}),
    ("language_model.layers.[!13].input_layernorm", {"model.language_model.layers.0.input_layernorm.weight",
                                                     "model.language_model.layers.2.input_layernorm.weight"}),
    ("re:^lm_head\\.", {"lm_head.weight"}),
    ("re:layers\\.(2|3)\\.self_attn\\.o_proj\\.weight$", {
        "model.language_model.layers.2.self_attn.o_proj.weight",
        "model.language_model.layers.3.self_attn.o_proj.weight"}),  # CLIP's is out_proj
])
def test_globs_and_regex(tiny_index, sel, expect):
    assert names(tiny_index, sel) == expect


def test_reach_warning_for_short_names(tiny_index):
    hits = select(tiny_index, "*q_proj*")
    warning = reach(tiny_index, "*q_proj*", hits)
    assert warning and "vision" in warning and "llm" in warning
    assert reach(tiny_index, "@llm", select(tiny_index, "@llm")) is None
    assert reach(tiny_index, "language_model.**.q_proj", select(tiny_index, "language_model.**.q_proj")) is None


@pytest.mark.parametrize("sel,message", [
    ("layers.99", "matches no parameter"),
    ("q_prj", "closest names: q_proj"),
    ("language_model.model.layers.0", "names changed in transformers 5.*model.language_model.layers.0"),
    ("vision_tower.vision_model.encoder", "names changed in transformers 5.*vision_tower.encoder"),
    ("@llm.layers[10:]", "selects no layer: the llm tower has 4 layers"),
    ("@llm.layers[7]", "has 4 layers"),
    ("@llm.layers[::0]", "step cannot be zero"),
    ("@llm.layers[a:b]", "Python slice syntax"),
    ("@visoin", "did you mean @vision"),
    ("re:(unclosed", "bad regular expression"),
    ("re:", "needs a regular expression"),
    ("layers.[9-0]", "bad glob: bad character range"),
    ("", "empty selector"),
    ("two words", "cannot contain spaces"),
    ("layers..1", "empty dotted segment"),
    ("x" * 600, "limit is 512"),
])
def test_bad_selectors(tiny_index, sel, message):
    with pytest.raises(SelectorError, match=message):
        select(tiny_index, sel)


def test_catastrophic_regex_is_bounded(tiny_index):
    import time
    from dataclasses import replace

    from freezelab.index import ParamInfo
    long = ParamInfo("a" * 5000 + "!", (1,), 1, "float32", "llm", "llm.other")
    index = replace(tiny_index, params=[*tiny_index.params, long])
    t0 = time.monotonic()
    with pytest.raises(SelectorError, match="takes too long"):
        select(index, "re:(a|aa)+$")
    assert time.monotonic() - t0 < 2.0


def test_parse_is_model_free():
    assert parse("@llm.layers[-4:]").kind == "layers"
    assert parse("re:foo").kind == "regex"
    assert parse("*.weight").kind == "glob"
    assert str(parse("  @vision ")) == "@vision"
