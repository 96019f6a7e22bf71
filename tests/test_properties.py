"""Property tests of plan parsing and application (hypothesis).

For any rule list built from aliases, layer slices, globs over the model's own module paths and regular
expressions, applying the plan to a real model makes exactly the counted parameters require gradients
(the independent count: sum(p.numel() for p in model.parameters() if p.requires_grad)); a plan that does
not resolve changes nothing. Export then import gives back the same mask, in the JSON and the text form.
Parsing arbitrary text raises nothing but FreezelabError."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from freezelab.anatomy import count
from freezelab.errors import FreezelabError, SelectorError
from freezelab.exports import export, import_plan
from freezelab.index import ModelIndex
from freezelab.models import build, index_of
from freezelab.plan_files import from_json, from_text
from freezelab.plans import Plan, Rule, apply, plan_mask, resolve
from freezelab.selectors import ALIASES, parse, select
from freezelab.sources import resolve as resolve_source

# (model, device): the tiny model with real CPU tensors, two published architectures on the meta device
# (llava-interleave-qwen-0.5b ties lm_head to the input embeddings: one tensor, counted once)
MODELS = (("tiny", "cpu"), ("llava-1.5-7b", "meta"), ("llava-interleave-qwen-0.5b", "meta"))


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def pair(request):
    name, device = request.param
    source = resolve_source(name)
    return name, build(source, device=device, dtype="fp32"), index_of(source, dtype="fp32")


# -- strategies ------------------------------------------------------------------------------

def _bound(n: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(-n - 2, n + 2))


def layer_selectors(index: ModelIndex) -> st.SearchStrategy[str]:
    towers = [t for t in ("llm", "vision") if index.layers.get(t)]

    def one(tower: str) -> st.SearchStrategy[str]:
        n = len(index.layers[tower])
        single = st.integers(-n, n - 1).map(lambda k: f"@{tower}.layers[{k}]")
        span = st.tuples(_bound(n), _bound(n), st.sampled_from([None, 1, 2, 3, -1])).map(
            lambda t: f"@{tower}.layers[{'' if t[0] is None else t[0]}:{'' if t[1] is None else t[1]}"
                      f"{'' if t[2] is None else f':{t[2]}'}]")
        return st.one_of(single, span)

    return st.sampled_from(towers).flatmap(one)


def pick(items: list[str]) -> st.SearchStrategy[str]:
    """sampled_from without its repr: hypothesis would print hundreds of module paths in warnings."""
    def item(i: int) -> str:
        return items[i]

    return st.integers(0, len(items) - 1).map(item)


def glob_selectors(paths: list[str]) -> st.SearchStrategy[str]:
    """A real module path, with one segment replaced by a wildcard or `**`, or a suffix of it."""
    def mutate(path: str, how: int, at: int) -> str:
        parts = path.split(".")
        k = at % len(parts)
        if how == 1:
            parts[k] = "*"
        elif how == 2:
            parts[k] = "**"
        elif how == 3:
            parts[k] = parts[k][:1] + "*"
        elif how == 4:
            parts = parts[k:]
        return ".".join(parts)

    return st.builds(mutate, pick(paths), st.integers(0, 4), st.integers(0, 20))


def regex_selectors(paths: list[str]) -> st.SearchStrategy[str]:
    escaped = pick(paths).map(re.escape)
    fixed = st.sampled_from([r"re:layers\.(1|2)\.", r"re:(q|v)_proj\.weight$", r"re:norm", r"re:^lm_head\.",
                             r"re:\.bias$", r"re:embed"])
    return st.one_of(fixed, st.tuples(escaped, st.sampled_from(["", r"\.", r"\.weight$", "$"])).map(
        lambda t: f"re:^{t[0]}{t[1]}"))


def rule_lists(index: ModelIndex) -> st.SearchStrategy[list[tuple[str, str]]]:
    paths = [m.path for m in index.modules if m.path and m.params]
    selector = st.one_of(st.sampled_from(ALIASES), layer_selectors(index), glob_selectors(paths),
                         regex_selectors(paths), pick(paths))
    return st.lists(st.tuples(st.sampled_from(["train", "freeze"]), selector), max_size=8)


def plans(index: ModelIndex) -> st.SearchStrategy[Plan]:
    return st.builds(lambda base, rules: Plan(base, tuple(Rule(a, s) for a, s in rules)),
                     st.sampled_from([None, "frozen", "trainable"]), rule_lists(index))


def requires_grad(model) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


# -- application -------------------------------------------------------------------------------

@settings(deadline=None, max_examples=80,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_applied_plan_trains_exactly_what_it_counts(pair, data):
    _, model, index = pair
    plan = data.draw(plans(index))
    before = requires_grad(model)
    try:
        res = resolve(plan, index)
    except SelectorError:  # a rule matches nothing: the model must be left exactly as it was
        with pytest.raises(SelectorError):
            apply(plan, model, index)
        assert requires_grad(model) == before
        return
    apply(plan, model, index)
    independent = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count(index, res.mask).trainable == independent
    assert sum(n for n, on in zip(index.numels, res.mask) if on) == independent
    assert plan_mask(plan, index) == res.mask  # the mask alone (rule simplification) agrees



# -- export / import ---------------------------------------------------------------------------

@settings(deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_export_then_import_gives_the_same_mask(pair, data):
    _, _, index = pair
    plan = data.draw(plans(index))
    try:
        mask = resolve(plan, index).mask
    except SelectorError:
        assume(False)
    json_text = export(plan, index, "json").text
    for form in (json_text, json_text.encode(), plan.to_text(), plan.to_json()):
        again = import_plan(form)
        assert resolve(again, index).mask == mask
        assert again.rules == plan.rules
    assert resolve(from_json(plan.to_json()), index).mask == mask
    assert resolve(from_text(plan.to_text()), index).mask == mask


# -- parsing arbitrary text --------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
PLAN_LIKE = st.fixed_dictionaries({"schema": st.sampled_from(["freezelab.plan/1", "x"]),
                                   "rules": st.lists(st.dictionaries(st.sampled_from(["action", "selector", "x"]),
                                                                     JSON_VALUES, max_size=3), max_size=3)},
                                  optional={"base": JSON_VALUES, "preset": JSON_VALUES, "model": JSON_VALUES,
                                            "trainable_params": JSON_VALUES})
TEXTS = st.one_of(
    st.text(max_size=300),
    st.text(max_size=100).map(lambda t: "re:" + t),
    st.text(alphabet="@llmvisionprojector.layers[]:-0123456789*?!", max_size=40),
    st.text(max_size=80).map(lambda t: f"train {t}\nfreeze {t[::-1]}\nbase {t[:5]}"),
    JSON_VALUES.map(json.dumps),
    PLAN_LIKE.map(json.dumps),
)


@pytest.fixture(scope="module")
def tiny_idx():
    return index_of(resolve_source("tiny"))


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_parsing_any_text_raises_only_freezelab_errors(tiny_idx, text):
    for parse_it in (parse, import_plan, lambda t: import_plan(t.encode("utf-8", "surrogatepass")), from_text,
                     from_json, lambda t: select(tiny_idx, t)):
        try:
            parse_it(text)
        except FreezelabError as err:
            assert str(err)
