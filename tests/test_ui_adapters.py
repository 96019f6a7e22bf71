"""The dashboard's adapter panel at handler level: the preview, lora rules, settings that follow the plan,
the tree's adapter rows, charts that split adapters from full training, and the adapter lessons."""

from __future__ import annotations

import json

import pytest

from freezelab.adapters import AdapterError
from freezelab.charts import breakdown_with_overhead
from freezelab.errors import PlanError
from freezelab.model_cache import ModelCache
from freezelab.session import Session
from freezelab.ui import adapter_view, handlers
from freezelab.ui.learn_view import run_lesson

LLM_LAYER = 1024  # tiny: the in + out features of one LLM layer's 7 Linear layers
PROJECTOR = (32 * 64 + 64) + (64 * 64 + 64)


@pytest.fixture(scope="module")
def app():
    return handlers.App(cache=ModelCache())


@pytest.fixture()
def start(app):
    return handlers.build_view(app, Session())


def shown_trainable(view):
    html = view.summary
    i = html.index('id="fl-trainable">') + len('id="fl-trainable">')
    return int(html[i:html.index("<", i)].replace(",", ""))


def test_preview_counts_what_a_lora_rule_would_add(app, start):
    text = adapter_view.preview_adapters(app, start.session, "@llm.layers[-1:]")
    assert "**7 Linear layers** (llm: 7)" in text and f"**{8 * LLM_LAYER / 1000:.2f}K adapter parameters**" in text
    assert adapter_view.preview_adapters(app, start.session, "@embeddings").startswith("⚠️ rule 1 (lora @embeddings)")
    assert adapter_view.preview_adapters(app, start.session, " ") == adapter_view.ADAPTER_PROMPT


def test_adding_adapters_counts_them_and_marks_the_tree(app, start):
    view = handlers.add_rule(app, start.session, "train", "@projector")
    view = adapter_view.add_adapters(app, view.session, "@llm")
    assert shown_trainable(view) == view.trainable == PROJECTOR + 8 * 4 * LLM_LAYER
    assert "(32,768 in adapters)" in view.summary and view.session.plan.rules[-1].action == "lora"
    rows = json.loads(view.tree)["rows"]
    adapted = [r for r in rows if "A" in r[5]]
    parts = [r for r in rows if "X" in r[5]]
    assert len(adapted) == 28 and all(r[2] == "lora.Linear" for r in adapted)
    assert len(parts) == 56 and all(r[4] == "e" for r in parts)  # no checkbox: the lora rule decides them
    bars = {t["name"]: t["x"] for t in view.params_fig.to_dict()["data"]}
    assert bars["adapters"] == [0, 0, 8 * 4 * LLM_LAYER] and bars["trained in full"] == [0, PROJECTOR, 0]
    with pytest.raises(AdapterError, match="train in full already"):
        adapter_view.add_adapters(app, view.session, "@projector")


def test_settings_change_the_plan_and_follow_it(app, start):
    view = adapter_view.add_adapters(app, start.session, "@llm")
    view = adapter_view.set_adapter_settings(app, view.session, 16, 32, 0.05, True, "4bit", "nf4", True)
    plan = view.session.plan
    assert (plan.lora.r, plan.lora.alpha, plan.lora.dora, plan.quant.bits) == (16, 32, True, "4bit")
    assert view.adapter_settings == handlers.AdapterSettings(16, 32, 0.05, True, "4bit", "nf4", True)
    parts = breakdown_with_overhead(view.memory.estimate)
    assert parts["quantized_weights"] > 0 and parts["adapter_weights"] > 0
    assert sum(v for k, v in parts.items() if "weights" in k) == view.memory.estimate.breakdown["weights"]
    undone = handlers.undo(app, view.session)
    assert undone.adapter_settings.r == 8
    with pytest.raises(PlanError, match="LoRA rank r must be a whole number"):
        adapter_view.set_adapter_settings(app, view.session, 0, 8, 0, False, "none", "nf4", True)


def test_adapter_lessons_compute_their_numbers(app, start):
    view, text = run_lesson(app, start.session, "lora")
    assert "Trainable parameters: 6.76B → **340.80M**" in text
    assert view.trainable == 340_795_392
    view, text = run_lesson(app, view.session, "qlora")
    assert "On an RTX 4090 24 GB card: **it fits**" in text
    assert view.session.plan.quant.bits == "4bit" and view.session.workload.optimizer == "paged-adamw-8bit"
