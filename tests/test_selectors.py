"""Selectors: aliases, layer slices, segment globs, regular expressions, and their failures."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import regex
import regex._main as regex_main
from hypothesis import given, settings
from hypothesis import strategies as st

from freezelab import regexes, selectors
from freezelab.errors import SelectorError
from freezelab.globs import Glob
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


# -- globs: linear-time matching with the documented segment semantics ---------------------------

def reference_glob_regex(glob: str) -> str:
    """The documented semantics as one regular expression (how globs were matched before the linear matcher):
    segment globs searched in a dotted name; a class never matches the dot, as no segment holds one."""
    def segment(seg: str) -> str:
        out, i = "", 0
        while i < len(seg):
            c, end = seg[i], seg.find("]", i + 1) if seg[i] == "[" else -1
            if c == "*":
                out += r"[^.]*"
            elif c == "?":
                out += r"[^.]"
            elif end > i + 1:
                inner = seg[i + 1:end]
                negate = inner.startswith("!") and len(inner) > 1
                chars = (inner[1:] if negate else inner).replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
                out += f"(?!\\.)[{'^' if negate else ''}{chars}]"
                i = end
            else:
                out += re.escape(c)
            i += 1
        return out

    body, gap = "", False
    for seg in glob.split("."):
        if seg == "**":
            gap = True
            continue
        if body:
            body += r"\.(?:[^.]+\.)*" if gap else r"\."
        body += segment(seg)
        gap = False
    return rf"(?:^|\.){body or r'[^.]+'}(?:\.|$)"


GLOB_TOKENS = st.sampled_from(["a", "b", "1", "_", "*", "?", "[ab]", "[!a]", "[a-b]", "[", "]"])
GLOB_SEGMENTS = st.one_of(st.just("**"), st.lists(GLOB_TOKENS, min_size=1, max_size=4).map("".join))
NAMES = st.lists(st.text(alphabet="ab1_[]", min_size=1, max_size=4), min_size=1, max_size=6).map(".".join)


@settings(max_examples=600, deadline=None)
@given(glob=st.lists(GLOB_SEGMENTS, min_size=1, max_size=5).map(".".join), names=st.lists(NAMES, max_size=8))
def test_the_linear_glob_matcher_agrees_with_the_segment_regex(glob, names):
    reference = re.compile(reference_glob_regex(glob))
    matcher = Glob(glob)
    for name in names:
        assert matcher.search(name) == bool(reference.search(name)), (glob, name)


def test_a_negated_class_stays_inside_its_segment(tiny_index):
    assert names(tiny_index, "layers.[!x].mlp.down_proj") == {
        f"model.language_model.layers.{i}.mlp.down_proj.weight" for i in range(4)}
    with pytest.raises(SelectorError, match="matches no parameter"):  # `[!x]` never stands for the dot
        select(tiny_index, "language_model.layers[!x]0.mlp")


def test_a_backtracking_glob_costs_no_more_than_any_other(shipped_indexes):
    """`*?` twelve times then Z: a backtracking matcher tries every split of each name segment (10 s on this
    model); the automaton takes one pass per distinct name segment."""
    index = shipped_indexes["llava-onevision-qwen2-72b"]
    with pytest.raises(SelectorError, match="matches no parameter"):
        select(index, "*?" * 12 + "Z")
    assert len(select(index, "*?" * 12 + "*")) == len(select(index, "re:[^.]{12}"))


# -- regular expressions: compile within bounds, cache bounded -----------------------------------

@pytest.mark.parametrize("body,message", [
    ("a{4294967294}", "repetition count 4,294,967,294 is above the limit of 1,000"),
    ("a{2000000}", "repetition count 2,000,000 is above the limit of 1,000"),
    ("(?x)a{ 2 000 }", "repetition count 2,000 is above"),          # verbose mode reads spaced digits as a count
    ("(?:[a-z]{1000}){1000}", "could expand it to more than 100,000 elements"),
    ("x{500}y{500}", "could expand it to more than 100,000"),
    ("(?:" * 100 + "a" + ")" * 100, "nest more than 64 deep"),
])
def test_a_regex_is_refused_before_compiling_when_it_could_explode(tiny_index, body, message):
    regex.purge()
    with pytest.raises(SelectorError, match=f"bad regular expression: .*{message}"):
        select(tiny_index, "re:" + body)
    assert not regexes.CACHE.get(body)


def test_counts_that_are_not_counts_are_not_refused(tiny_index):
    assert names(tiny_index, r"re:^lm_head\.weight(?:\{9999999\})?$") == {"lm_head.weight"}  # escaped braces
    assert names(tiny_index, "re:^lm_head[{]?.weight") == {"lm_head.weight"}
    assert regexes.expansion(r"layers\.\d{1,2}\.") == 15 * 2 + 2   # the 15 characters up to the count weigh 2


def test_compiled_regexes_stay_in_one_bounded_cache(tiny_index, monkeypatch):
    monkeypatch.setattr(regexes, "CACHE", regexes._Cache())
    monkeypatch.setattr(regexes, "CACHE_ENTRIES", 50)
    regex.purge()
    for i in range(120):
        select(tiny_index, rf"re:lm_head|x{{{i % 7}}}y{i}")
    assert len(regexes.CACHE) == 50
    assert len(regex_main._cache) == 0  # the regex module's own cache (unbounded in bytes) holds none of them
    assert len(regex_main._locale_sensitive) < regexes.PURGE_EVERY


def test_the_compile_counts_against_the_regex_budget(tiny_index):
    compiled = parse("re:^lm_head")
    slow = replace(compiled, compile_s=selectors.SELECTOR_BUDGET_S)  # as if compiling had used it all
    with pytest.raises(SelectorError, match="its compile included"):
        select(tiny_index, slow)
    assert names(tiny_index, compiled) == {"lm_head.weight"}
