"""Plans: base state, ordered rules (last match wins), presets, serialisation."""

from __future__ import annotations

import json

import pytest

from freezelab.anatomy import component_counts, count
from freezelab.errors import PlanError, SelectorError
from freezelab.models import build, index_of
from freezelab.plan_files import from_json, from_text
from freezelab.plans import PRESETS, Plan, Rule, apply, preset, preset_names, resolve


def trainable(index, plan):
    return count(index, resolve(plan, index).mask).trainable


def test_base_follows_first_rule():
    assert Plan(rules=(Rule("train", "@projector"),)).effective_base == "frozen"
    assert Plan(rules=(Rule("freeze", "@vision"),)).effective_base == "trainable"
    assert Plan().effective_base == "frozen"
    assert Plan("trainable", (Rule("train", "@llm"),)).effective_base == "trainable"


def test_last_match_wins(tiny_index):
    comps = component_counts(tiny_index, [True] * len(tiny_index.params))
    plan = Plan(rules=(Rule("train", "@llm"), Rule("freeze", "@llm.layers[0:3]"), Rule("train", "@llm.layers[1]")))
    layer = sum(p.numel for p in tiny_index.params if p.component == "llm" and p.layer == 1)
    frozen3 = sum(p.numel for p in tiny_index.params if p.component == "llm" and p.layer in (0, 1, 2))
    assert trainable(tiny_index, plan) == comps["llm"].total - frozen3 + layer
    swapped = Plan(rules=(Rule("train", "@llm.layers[1]"), Rule("freeze", "@llm.layers[0:3]")))
    assert trainable(tiny_index, swapped) == 0


def test_freeze_first_means_trainable_base(tiny_index):
    comps = component_counts(tiny_index, [True] * len(tiny_index.params))
    plan = Plan(rules=(Rule("freeze", "@vision"),))
    assert trainable(tiny_index, plan) == tiny_index.total_params - comps["vision"].total


def test_presets_exact_on_tiny(tiny_index):
    c = component_counts(tiny_index, [True] * len(tiny_index.params))
    layer = {i: sum(p.numel for p in tiny_index.params if p.component == "llm" and p.layer == i) for i in range(4)}
    expected = {
        "stage1": c["projector"].total,
        "stage2": c["projector"].total + c["llm"].total,
        "full": tiny_index.total_params,
        "llm": c["llm"].total,
        "vision-projector": c["vision"].total + c["projector"].total,
        "last-2": layer[2] + layer[3],
        "last-4": sum(layer.values()),
        "lm-head": c["lm_head"].total,
        "frozen": 0,
    }
    for name, n in expected.items():
        assert trainable(tiny_index, preset(name)) == n, name


def test_every_preset_has_an_explanation():
    assert len(PRESETS) == 8
    for p in PRESETS.values():
        assert p.title and len(p.explanation) > 20
    assert "last-N" in preset_names()
    assert preset("last_3").rules == (Rule("train", "@llm.layers[-3:]"),)
    assert preset("last-3").preset == "last-3"


def test_unknown_preset():
    with pytest.raises(PlanError, match="unknown preset 'stage3'.*stage1"):
        preset("stage3")
    with pytest.raises(PlanError, match="at least 1"):
        preset("last-0")


def test_selector_matching_nothing_names_the_rule(tiny_index):
    with pytest.raises(SelectorError, match=r"rule 2 \(freeze layers.9\)"):
        resolve(Plan(rules=(Rule("train", "@llm"), Rule("freeze", "layers.9"))), tiny_index)


def test_apply_sets_requires_grad_exactly(tiny_source, tiny_index):
    model = build(tiny_source, device="cpu", dtype="fp32")
    res = apply(preset("stage2"), model, tiny_index)
    on = {n for n, p in model.named_parameters() if p.requires_grad}
    assert on == res.trainable_names(tiny_index)
    assert all(n.startswith(("model.multi_modal_projector.", "model.language_model.", "lm_head.")) for n in on)


def test_json_round_trip():
    plan = preset("stage1").then("freeze", "linear_2.bias").then("train", "re:layers\\.3\\.")
    again = from_json(plan.to_json())
    assert again == plan
    assert json.loads(plan.to_json())["schema"] == "freezelab.plan/2"
    version1 = {"schema": "freezelab.plan/1", "base": "frozen", "preset": "stage1",
                "rules": [r.to_dict() for r in plan.rules]}
    assert from_json(json.dumps(version1)) == plan  # version-1 files are read as they were written


@pytest.mark.parametrize("text,message", [
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"schema": "other/1"}', "not a freezelab plan"),
    ('{"schema": "freezelab.plan/1", "rules": {}}', "must be a list"),
    ('{"schema": "freezelab.plan/1", "rules": [{"action": "train"}]}', "'action' and 'selector' only"),
    ('{"schema": "freezelab.plan/1", "rules": [{"action": "lora", "selector": "@llm"}]}', "lora rules need schema"),
    ('{"schema": "freezelab.plan/1", "lora": {"r": 8}}', "unknown plan field"),
    ('{"schema": "freezelab.plan/2", "rules": [{"action": "train", "selector": "@llm", "r": 4}]}', "only a lora rule"),
    ('{"schema": "freezelab.plan/2", "rules": [{"action": "lora", "selector": "@llm", "r": 0}]}', "from 1 to"),
    ('{"schema": "freezelab.plan/2", "lora": {"r": 8, "rank": 2}}', "unknown plan 'lora' field"),
    ('{"schema": "freezelab.plan/2", "lora": {"dropout": 1.0}}', "dropout must be"),
    ('{"schema": "freezelab.plan/2", "quant": {"bits": "3bit"}}', "quantization must be"),
    ('{"schema": "freezelab.plan/1", "rules": [{"action": "melt", "selector": "@llm"}]}', "train, freeze or lora"),
    ('{"schema": "freezelab.plan/1", "rules": [{"action": "train", "selector": "@nope"}]}', "unknown alias"),
    ('{"schema": "freezelab.plan/1", "base": "warm"}', "frozen or trainable"),
    ('{"schema": "freezelab.plan/1", "extra": 1}', "unknown plan field"),
    ('{"schema": "freezelab.plan/1", "rules": [{"action": "train", "selector": 5}]}', "selector must be text"),
])
def test_bad_plan_json(text, message):
    with pytest.raises(PlanError, match=message):
        from_json(text)


def test_oversized_plan():
    with pytest.raises(PlanError, match="limit"):
        from_json(" " * 300_000)
    rules = [{"action": "train", "selector": "@llm"}] * 1001
    with pytest.raises(PlanError, match="at most 1000 rules"):
        from_json(json.dumps({"schema": "freezelab.plan/1", "rules": rules}))


def test_text_plans():
    plan = from_text("# stage 1 plus the last layer\nbase frozen\ntrain @projector\ntrain @llm.layers[-1:]\n")
    assert plan.base == "frozen" and [str(r) for r in plan.rules] == ["train @projector", "train @llm.layers[-1:]"]
    assert from_text(plan.to_text()) == Plan("frozen", plan.rules)
    with pytest.raises(PlanError, match="line 1"):
        from_text("melt @llm")


def test_resolve_and_rule_simplification_share_one_memo_of_selector_matches(monkeypatch):
    from freezelab import plans
    from freezelab.sources import resolve as resolve_source

    index = index_of(resolve_source("tiny"))  # a fresh index object: its memo starts empty
    calls: list[str] = []
    real = plans.select

    def counting(ix, selector, deadline=None):
        calls.append(str(selector))
        return real(ix, selector, deadline)

    monkeypatch.setattr(plans, "select", counting)
    plan = Plan(rules=(Rule("train", "@llm"), Rule("freeze", "*q_proj*")))
    first = resolve(plan, index)
    assert calls == ["@llm", "*q_proj*"]
    shorter = plans.append_rule(plan, index, "train", "@llm")  # `train @llm` again covers both old rules
    assert shorter.rules == (Rule("train", "@llm"),)
    again = resolve(plan, index)
    assert calls == ["@llm", "*q_proj*"]  # neither the edit nor the second resolve ran a selector again
    assert again.mask == first.mask == plans.plan_mask(plan, index)
    assert again.matched == first.matched == [len(real(index, "@llm")), len(real(index, "*q_proj*"))]
