"""Every dashboard event at handler level (no browser, no server): counts equal independent
computations, errors change nothing, sessions never see each other's changes."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezelab import units
from freezelab.anatomy import count, tree
from freezelab.errors import FreezelabError, NotLlavaError, PlanError, SelectorError, SourceError
from freezelab.memory.analytic import estimate
from freezelab.model_cache import ModelCache
from freezelab.plans import Plan, append_rule, module_selector, plan_mask, preset, resolve
from freezelab.policy import PolicyError, public_policy
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.context_view import result_html, session_key
from freezelab.ui.export_view import export_view
from freezelab.ui.gpu_lines import common_gpus
from freezelab.ui.learn_view import LESSONS, run_lesson
from freezelab.ui.registry import CLEARED, shown_values
from freezelab.ui.tree_view import tree_data
from freezelab.ui.verify_view import Cancels, run_step
from freezelab.ui.verify_view import simulate as verify_simulate
from freezelab.workload import Workload, WorkloadError

# llava-1.5-7b as published (shared calibration README): 7,063,427,072 parameters; its projector is
# Linear(1024 -> 4096) + Linear(4096 -> 4096) with biases.
LLAVA_7B_TOTAL = 7_063_427_072
LLAVA_7B_PROJECTOR = 1024 * 4096 + 4096 + 4096 * 4096 + 4096


@pytest.fixture(scope="module")
def app():
    return handlers.App(cache=ModelCache())


@pytest.fixture()
def start(app):
    """A session on the tiny model with nothing trainable: the tests below build plans from scratch."""
    return handlers.build_view(app, Session())


def numel(model, prefixes: tuple[str, ...]) -> int:
    """Independent count: the torch model's parameters whose names start with a prefix."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def trainable_shown(view: handlers.View) -> int:
    """The count as the page shows it (summary HTML), parsed back."""
    html = view.summary
    start = html.index('id="fl-trainable">') + len('id="fl-trainable">')
    return int(html[start:html.index("<", start)].replace(",", ""))


# -- opening state ---------------------------------------------------------------------

def test_app_opens_ready_on_the_tiny_model(app, tiny_model):
    start = handlers.initial_view(app)
    assert start.session.model == "tiny" and start.session.plan == preset("stage1")
    assert trainable_shown(start) == numel(tiny_model, ("model.multi_modal_projector.",)) > 0
    assert "LLaVA stage 1" in start.status
    assert f"of {sum(p.numel() for p in tiny_model.parameters()):,} parameters" in start.summary
    assert json.loads(start.tree)["rows"][0][1] == "tiny"
    assert start.map_fig.data and start.params_fig.data and start.memory.figure.data and start.memory.curve.data


# -- presets, toggles, rules -------------------------------------------------------------

def test_preset_stage1_trains_exactly_the_projector(app, start, tiny_model):
    view = handlers.apply_preset(app, start.session, "stage1")
    assert view.trainable == trainable_shown(view) == numel(tiny_model, ("model.multi_modal_projector.",))
    assert view.rules.endswith("base frozen\ntrain @projector")


def test_preset_last_n_uses_the_slider_value(app, start, tiny_model):
    view = handlers.apply_preset(app, start.session, "last-n", 2)
    assert view.trainable == numel(tiny_model, ("model.language_model.layers.2.", "model.language_model.layers.3."))
    assert view.session.plan.preset == "last-2"
    assert "all of them train" not in view.status
    more = handlers.apply_preset(app, start.session, "last-n", 10)  # the tiny LLM has 4 layers
    assert more.trainable == numel(tiny_model, ("model.language_model.layers.",))
    assert "tiny has only 4 LLM layers: all of them train" in more.status


def test_toggle_trains_a_subtree_as_a_module_path_rule(app, start, tiny_model):
    stage1 = handlers.apply_preset(app, start.session, "stage1").session
    view = handlers.toggle_module(app, stage1, "model.language_model.layers.1", True)
    assert view.trainable == numel(tiny_model, ("model.multi_modal_projector.", "model.language_model.layers.1."))
    assert view.session.plan.rules[-1].selector == "model.language_model.layers.1"
    rows = {r[1]: r for r in json.loads(view.tree)["rows"] if r[0] <= 3}
    assert rows["language_model"][4] == "p" and rows["vision_tower"][4] == "f"
    assert rows["multi_modal_projector"][4] == "t"


def test_toggle_off_then_on_leaves_the_plan_as_it_was(app, start):
    stage1 = handlers.apply_preset(app, start.session, "stage1").session
    off = handlers.toggle_module(app, stage1, "model.multi_modal_projector.linear_1", False)
    assert len(off.session.plan.rules) == 2
    back = handlers.toggle_module(app, off.session, "model.multi_modal_projector.linear_1", True)
    assert back.session.plan.rules == stage1.plan.rules


def test_unticking_what_a_preset_trained_piece_by_piece_shortens_the_plan(app, start):
    stage2 = handlers.apply_preset(app, start.session, "stage2").session
    s = handlers.toggle_module(app, stage2, "model.language_model", False).session
    assert [str(r) for r in s.plan.rules] == ["train @projector", "train @llm", "freeze model.language_model"]
    s = handlers.toggle_module(app, s, "lm_head", False).session
    # @llm is now overridden everywhere by the two later rules, and freezing over a frozen base is a no-op
    assert [str(r) for r in s.plan.rules] == ["train @projector"]


def test_toggling_the_root_replaces_every_earlier_rule(app, start, tiny_model):
    s = handlers.toggle_module(app, start.session, "model.language_model.layers.0", True).session
    s = handlers.toggle_module(app, s, "model.vision_tower", True).session
    view = handlers.toggle_module(app, s, "", False)
    assert [str(r) for r in view.session.plan.rules] == []
    assert view.trainable == 0
    view = handlers.toggle_module(app, s, "", True)
    assert [str(r) for r in view.session.plan.rules] == ["train @all"]
    assert view.trainable == sum(p.numel() for p in tiny_model.parameters())


def test_toggle_of_an_unknown_or_empty_module_is_refused(app, start):
    with pytest.raises(SelectorError, match="not a module"):
        handlers.toggle_module(app, start.session, "model.nope", True)
    with pytest.raises(SelectorError, match="no parameters"):
        handlers.toggle_module(app, start.session, "model.multi_modal_projector.act", True)


def test_module_selector_is_the_exact_subtree(tiny_index):
    for m in tiny_index.modules:
        if m.params:
            chosen = plan_mask(Plan("frozen").then("train", module_selector(tiny_index, m.path)), tiny_index)
            assert {i for i, on in enumerate(chosen) if on} == set(m.params)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["train", "freeze"]), st.integers(0, 10_000)), max_size=12),
       st.sampled_from(["frozen", "trainable"]))
def test_collapsed_rules_give_the_same_mask_as_all_rules(tiny_index, steps, base):
    paths = [m.path for m in tiny_index.modules if m.params]
    short = full = Plan(base)
    for action, k in steps:
        selector = module_selector(tiny_index, paths[k % len(paths)])
        short = append_rule(short, tiny_index, action, selector)
        full = full.then(action, selector)
        assert resolve(short, tiny_index).mask == resolve(full, tiny_index).mask
    assert len(short.rules) <= len(full.rules)


def test_selector_train_and_freeze_buttons(app, start, tiny_model):
    view = handlers.add_rule(app, start.session, "train", "@llm.layers[-1:]")
    assert view.trainable == numel(tiny_model, ("model.language_model.layers.3.",))
    view = handlers.add_rule(app, view.session, "freeze", "*mlp*")
    assert view.trainable == numel(tiny_model, ("model.language_model.layers.3.self_attn.",
                                                "model.language_model.layers.3.input_layernorm.",
                                                "model.language_model.layers.3.post_attention_layernorm."))


def test_a_rule_that_changes_nothing_is_not_added(app, start):
    stage1 = handlers.apply_preset(app, start.session, "stage1").session
    view = handlers.add_rule(app, stage1, "train", "model.multi_modal_projector.linear_2")
    assert view.session.plan == stage1.plan
    assert "No change" in view.status


def test_undo_and_reset(app, start):
    s1 = handlers.apply_preset(app, start.session, "stage2").session
    s2 = handlers.toggle_module(app, s1, "model.vision_tower", True).session
    assert handlers.undo(app, s2).session.plan == s1.plan
    reset = handlers.reset(app, s2)
    assert reset.trainable == 0 and reset.session.plan == Plan()
    assert handlers.undo(app, reset.session).session.plan == s2.plan
    assert handlers.undo(app, start.session).status == "Nothing to undo."


# -- selector preview ----------------------------------------------------------------------

def test_preview_counts_tensors_and_parameters(app, start, tiny_model):
    text = handlers.preview_selector(app, start.session, "@llm.layers[-2:]")
    names = [n for n, _ in tiny_model.named_parameters()
             if n.startswith(("model.language_model.layers.2.", "model.language_model.layers.3."))]
    n = numel(tiny_model, ("model.language_model.layers.2.", "model.language_model.layers.3."))
    assert f"Matches **{len(names)} tensors, {units.params(n)} parameters**" in text


def test_preview_warns_when_a_pattern_reaches_into_the_vision_tower(app, start, tiny_model):
    text = handlers.preview_selector(app, start.session, "*q_proj*")
    vision = [n for n, _ in tiny_model.named_parameters() if "q_proj" in n and n.startswith("model.vision_tower.")]
    llm = [n for n, _ in tiny_model.named_parameters() if "q_proj" in n and n.startswith("model.language_model.")]
    assert f"vision: {len(vision)} tensors" in text and f"llm: {len(llm)} tensors" in text
    assert "reaches into several components" in text


def test_preview_of_a_selector_matching_nothing_gives_the_hint(app, start):
    text = handlers.preview_selector(app, start.session, "language_model.model.layers.1")
    assert "matches no parameter" in text and "did you mean 'model.language_model.layers.1'" in text
    assert "slice syntax" in handlers.preview_selector(app, start.session, "@llm.layers[a:b]")


def test_pick_module_fills_the_selector(app, start):
    selector, preview = handlers.pick_module(app, start.session, "lm_head")
    assert selector == "lm_head" and "Matches **1 tensors" in preview


# -- errors leave the session unchanged -------------------------------------------------

@pytest.mark.parametrize("call, error", [
    (lambda app, s: handlers.add_rule(app, s, "train", "nonexistent_module"), SelectorError),
    (lambda app, s: handlers.add_rule(app, s, "train", ""), SelectorError),
    (lambda app, s: handlers.add_rule(app, s, "train", "re:(a+)+$("), SelectorError),
    (lambda app, s: handlers.apply_preset(app, s, "stage9"), PlanError),
    (lambda app, s: handlers.apply_preset(app, s, "last-n", "many"), handlers.OptionError),
    (lambda app, s: handlers.apply_preset(app, s, "last-n", 0), handlers.OptionError),
    (lambda app, s: handlers.set_tree_options(app, s, "", "deep"), handlers.OptionError),
    (lambda app, s: handlers.set_tree_options(app, s, "x" * 500, None), handlers.OptionError),
    (lambda app, s: handlers.set_workload(app, s, batch=0), WorkloadError),
    (lambda app, s: handlers.set_workload(app, s, batch=None), WorkloadError),
    (lambda app, s: handlers.set_workload(app, s, batch=2.5), WorkloadError),
    (lambda app, s: handlers.set_workload(app, s, text_tokens=float("nan")), WorkloadError),
    (lambda app, s: handlers.set_workload(app, s, dtype="fp8"), WorkloadError),
    (lambda app, s: handlers.set_workload(app, s, dtype="bf16", autocast="fp16"), WorkloadError),
    (lambda app, s: handlers.load_model(app, s, "/no/such/dir"), SourceError),
    (lambda app, s: handlers.load_model(app, s, "llava-1.5-7"), SourceError),
    (lambda app, s: handlers.load_model(app, s, ""), SourceError),
    (lambda app, s: handlers.import_plan(app, s, b"{not json"), PlanError),
    (lambda app, s: handlers.import_plan(app, s, b""), PlanError),
    (lambda app, s: handlers.import_plan(app, s, b"x" * 300_000), PlanError),
    (lambda app, s: handlers.import_plan(app, s, b"train model.nothing.here"), SelectorError),
])
def test_bad_input_raises_one_clear_error_and_changes_nothing(app, start, call, error):
    session = handlers.apply_preset(app, start.session, "stage1").session
    before = (session, len(app.cache))
    with pytest.raises(error) as info:
        call(app, session)
    assert str(info.value) and "Traceback" not in str(info.value)
    assert (session, len(app.cache)) == before
    assert handlers.build_view(app, session).trainable == handlers.apply_preset(app, start.session, "stage1").trainable


def test_a_non_llava_config_is_refused_and_the_previous_model_stays(app, start, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(NotLlavaError, match="not a vision-language model transformers builds"):
        handlers.load_model(app, start.session, str(config))
    assert handlers.build_view(app, start.session).header.startswith("**tiny**")


# -- model loading -------------------------------------------------------------------------

def test_loading_7b_keeps_a_plan_that_still_applies(app, start):
    stage1 = handlers.apply_preset(app, start.session, "stage1").session
    view = handlers.load_model(app, stage1, "llava-1.5-7b")
    assert view.session.plan == stage1.plan
    assert view.trainable == LLAVA_7B_PROJECTOR
    assert f"of {LLAVA_7B_TOTAL:,} parameters" in view.summary
    assert "architecture only" in view.header


def test_loading_resets_a_plan_that_does_not_apply(app, start):
    next_ = handlers.load_model(app, start.session, "llava-v1.6-mistral-7b").session
    with_newline = handlers.add_rule(app, next_, "train", "model.image_newline")
    assert with_newline.trainable == 4096  # LLaVA-NeXT's learned newline embedding: one hidden-size vector
    view = handlers.load_model(app, with_newline.session, "tiny")
    assert view.session.plan == Plan() and view.trainable == 0
    assert "does not fit this model" in view.status
    with pytest.raises(SelectorError, match="image_newline"):  # that plan belongs to the other model
        handlers.undo(app, view.session)
    again = handlers.load_model(app, view.session, "llava-v1.6-mistral-7b")
    assert handlers.undo(app, again.session).session.plan == with_newline.session.plan


def test_loading_weights_needs_weight_files(app, start):
    with pytest.raises(SourceError, match="no weight files"):
        handlers.load_model(app, start.session, "llava-1.5-7b", weights=True)


def test_public_mode_refuses_local_paths(start, tmp_path):
    public = handlers.App(cache=ModelCache(), policy=public_policy())
    with pytest.raises(PolicyError, match="disabled"):
        handlers.load_model(public, start.session, str(tmp_path))


# -- tree ------------------------------------------------------------------------------------

def test_tree_rows_match_anatomy_counts_on_7b(app):
    index = app.cache.get("llava-1.5-7b").index
    mask = resolve(preset("last-4"), index).mask
    rows = tree_data(index, mask)["rows"]
    expected = tree(index, mask)
    assert len(rows) == len(expected) == len(index.modules)
    for row, r in zip(rows, expected):
        assert row[0] == r.depth and row[2] == r.type
        want = f"{units.params(r.trainable)} / {units.params(r.total)}" if r.total else "no parameters"
        assert row[3] == want
        assert row[4] == {"trainable": "t", "frozen": "f", "partial": "p", "empty": "e"}[r.state]


def test_tree_filter_keeps_matches_and_their_ancestors(app, start, tiny_model):
    view = handlers.set_tree_options(app, start.session, "q_proj", None)
    rows = json.loads(view.tree)["rows"]
    hits = [r for r in rows if "H" in r[5]]
    assert len(hits) == sum(1 for n, _ in tiny_model.named_modules() if "q_proj" in n)
    assert all(r[1] == "q_proj" for r in hits)
    names = [n for n, _ in tiny_model.named_modules() if "q_proj" in n]
    kept = {".".join(n.split(".")[:k]) for n in names for k in range(len(n.split(".")) + 1)}
    assert len(rows) == len(kept)  # the matches, their ancestors and nothing else
    shallow = json.loads(handlers.set_tree_options(app, start.session, "", 1).tree)["rows"]
    assert [r[1] for r in shallow] == ["tiny", "model", "lm_head"]


def test_tree_marks_tied_weights_and_dead_parameters(app):
    index = app.cache.get("llava-interleave-qwen-0.5b").index
    rows = tree_data(index, [False] * len(index.params))["rows"]
    tied = [r for r in rows if "T" in r[5]]
    assert {r[1] for r in tied} == {"embed_tokens", "lm_head"}
    llava = app.cache.get("llava-1.5-7b").index
    dead = [r[1] for r in tree_data(llava, [False] * len(llava.params))["rows"] if "D" in r[5]]
    # vision_feature_layer=-2: the last CLIP layer (23) and post_layernorm never get a gradient
    assert "23" in dead and "post_layernorm" in dead and "22" not in dead


# -- workload and memory ---------------------------------------------------------------------

def test_workload_change_recomputes_the_estimate(app, start):
    s = handlers.apply_preset(app, start.session, "stage2").session
    view = handlers.set_workload(app, s, batch=4.0, text_tokens=512, grad_ckpt=True)
    assert view.session.workload == Workload(batch=4, text_tokens=512, grad_ckpt=True)
    index = app.cache.get("tiny").index
    expected = estimate(index, resolve(preset("stage2"), index).mask, view.session.workload)
    assert view.memory.estimate.peak_bytes == expected.peak_bytes
    assert view.memory.estimate.device_estimate_bytes == expected.device_estimate_bytes
    assert units.gib(expected.device_estimate_bytes) in view.memory.verdict


def test_verdict_names_each_card_with_its_margin(app, start):
    """Fits only where the device figure plus its measured error fits; tight inside the error band."""
    from freezelab.memory.verdict import DEVICE_ERROR

    big = handlers.load_model(app, start.session, "llava-1.5-7b").session
    big = handlers.set_workload(app, big, batch=4, text_tokens=1024).session
    small = handlers.apply_preset(app, big, "stage1")
    est = small.memory.estimate
    need, band = est.device_estimate_bytes, DEVICE_ERROR[est.method]
    fitting = [name for name, size in common_gpus() if size >= need * (1 + band)]
    tight = [name for name, size in common_gpus() if need * (1 - band) <= size < need * (1 + band)]
    verdict = small.memory.verdict
    assert fitting and f"smallest card: <b>{fitting[0]} (" in verdict and "± 3.6% (measured)" in verdict
    assert "fits: " + ", ".join(f"{n} (" for n in fitting[:1]) in verdict
    assert all(n in verdict.split("fits: ")[1].split("<br>")[0] for n in fitting)
    if tight:
        assert all(n in verdict.split("tight: ")[1].split("<br>")[0] for n in tight)
    huge = handlers.set_workload(app, handlers.apply_preset(app, big, "full").session, batch=32)
    assert huge.memory.estimate.device_estimate_bytes > max(size for _, size in common_gpus())
    assert "does not fit</span> any common GPU" in huge.memory.verdict


def test_a_card_inside_the_error_band_is_tight(app, start):
    """A workload whose device figure is within its error of an 80 GB card: tight there, with what it
    is short by."""
    from freezelab.memory.gpus import fits_table

    s = handlers.load_model(app, start.session, "llava-1.5-7b").session
    s = handlers.apply_preset(app, s, "full").session
    view = handlers.set_workload(app, s, batch=4, text_tokens=640)
    rows = {r["gpu"]: r for r in fits_table(view.memory.estimate)}
    h100 = rows["H100 80 GB"]
    assert -h100["margin_bytes"] <= h100["headroom_bytes"] < 0 and h100["verdict"] == "tight"
    tight = view.memory.verdict.split("tight: ")[1].split("<br>")[0]
    assert f"H100 80 GB ({units.gib(-h100['headroom_bytes'])} short)" in tight
    assert '<span class="fl-ok">fits</span> smallest card: <b>H200 141 GB' in view.memory.verdict


def test_a_refused_workload_value_shows_at_its_field_and_marks_the_results_stale(app, start):
    s = handlers.set_workload(app, handlers.apply_preset(app, start.session, "stage1").session, batch=4).session
    last = handlers.build_view(app, s)
    values = {**s.workload.to_dict(), "batch": 0}
    refused = handlers.edit_workload(app, s, **values)
    assert isinstance(refused, handlers.WorkloadRefused)
    # at the field: the error names it (style.CSS outlines the control with that data-field)
    assert '<li data-field="batch"><b>batch</b>: must be between 1 and 4,096, got 0</li>' in refused.error
    assert "they still show batch 4 × (64 text tokens + 1 image)" in refused.error
    # the verdict keeps the last valid numbers, marked out of date
    assert 'class="fl-verdict fl-stale"' in refused.verdict and "out of date" in refused.verdict
    assert units.gib(last.memory.estimate.device_estimate_bytes) in refused.verdict
    assert "batch must be between 1 and 4,096, got 0" in refused.status
    # only the status, the verdict and the error change on the page: the session keeps batch 4
    assert set(shown_values(refused)) == {"top.status", "memory.verdict", "memory.error"}
    two = handlers.edit_workload(app, s, **{**values, "gpus": 0})
    assert 'data-field="batch"' in two.error and 'data-field="gpus"' in two.error
    mixed = handlers.edit_workload(app, s, **{**s.workload.to_dict(), "autocast": "fp16"})
    assert mixed.error.count("data-field=") == 1 and 'data-field="autocast"' in mixed.error
    fixed = handlers.edit_workload(app, s, **{**values, "batch": 8})
    assert isinstance(fixed, handlers.View) and fixed.session.workload.batch == 8
    assert fixed.memory.error == "" and "fl-stale" not in fixed.memory.verdict


def test_the_status_line_always_says_something(app, start):
    s = handlers.apply_preset(app, start.session, "stage1").session
    views = {"workload": handlers.set_workload(app, s, batch=2),
             "filter": handlers.set_tree_options(app, s, "q_proj", None),
             "depth": handlers.set_tree_options(app, s, "", 2), "context": handlers.set_context(app, s, True)}
    for name, view in views.items():
        assert view.status.strip(), name
    need = units.gib(views["workload"].memory.estimate.device_estimate_bytes)
    assert views["workload"].status == f"Workload: batch 2 × (64 text tokens + 1 image), bf16, adamw: {need} per GPU."
    assert views["filter"].status == "The tree shows modules matching `q_proj`."


def test_small_models_draw_tensors_in_small_units_and_the_context_on_request(app, start):
    tiny = handlers.apply_preset(app, start.session, "stage1")
    assert tiny.memory.context is False
    assert "CUDA context + cache" not in [t.name for t in tiny.memory.figure.data]
    assert tiny.memory.figure.layout.xaxis.ticksuffix == " MiB"
    shown = handlers.set_context(app, tiny.session, True)
    assert shown.memory.context is True and shown.session.context is True
    assert "CUDA context + cache" in [t.name for t in shown.memory.figure.data]
    big = handlers.load_model(app, shown.session, "llava-1.5-7b")
    assert big.session.context is None and big.memory.context is True  # a 7B step: tensors outweigh the context
    assert big.memory.figure.layout.xaxis.ticksuffix == " GiB"


def test_verify_results_say_what_they_ran_for_and_go_stale_when_it_changes(app, start):
    s = handlers.apply_preset(app, start.session, "stage1").session
    now = handlers.build_view(app, s)
    key = session_key(s)
    assert f'data-fl-now="{key}"' in now.current
    label = result_html("Simulated", s, now.trainable)
    assert f'data-fl-for="{key}"' in label and "plan: <code>preset stage1; train @projector</code>" in label
    assert "(6.27K trainable) · batch 1 × (64 text tokens + 1 image), bf16, adamw" in label
    changed = [handlers.set_workload(app, s, batch=2), handlers.apply_preset(app, s, "stage2"),
               handlers.load_model(app, s, "llava-1.5-7b")]
    for view in changed:  # the page compares the keys (context_view.PAGE_JS): each of these marks it stale
        assert f'data-fl-now="{key}"' not in view.current and 'data-fl-now="' in view.current
    back = handlers.undo(app, handlers.apply_preset(app, s, "stage2").session)
    assert f'data-fl-now="{key}"' in back.current  # the same plan again: the result is current again


# -- export / import --------------------------------------------------------------------------

def test_export_and_import_round_trip(app, start):
    s = handlers.apply_preset(app, start.session, "stage1").session
    s = handlers.toggle_module(app, s, "model.language_model.layers.3", True).session
    view = export_view(app, s)
    with open(view.json_path, encoding="utf-8") as f:
        assert f.read() == view.text("json")
    assert view.exports["python"].exact
    imported = handlers.import_plan(app, start.session, view.text("json").encode())
    assert imported.session.plan.rules == s.plan.rules
    assert imported.trainable == handlers.build_view(app, s).trainable


def test_import_of_an_uploaded_file(app, start, tmp_path):
    path = tmp_path / "plan.txt"
    path.write_text("# stage 1\ntrain @projector\n")
    view = handlers.import_plan_file(app, start.session, str(path))
    assert view.session.plan.rules == preset("stage1").rules
    with pytest.raises(PlanError, match="no plan file"):
        handlers.import_plan_file(app, start.session, None)


# -- sessions --------------------------------------------------------------------------------

def test_sessions_do_not_leak(app):
    a = handlers.build_view(app, Session())
    b = handlers.build_view(app, Session())
    index = app.cache.get("tiny").index
    snapshot = json.dumps(index.to_dict(), sort_keys=True)
    a2 = handlers.toggle_module(app, a.session, "model.vision_tower", True)
    assert a2.trainable > 0
    assert handlers.build_view(app, b.session).trainable == 0
    assert b.session == a.session == Session()
    assert json.dumps(app.cache.get("tiny").index.to_dict(), sort_keys=True) == snapshot


def test_model_cache_is_bounded_and_shared():
    cache = ModelCache(capacity=2)
    first = cache.get("tiny")
    assert cache.get("tiny") is first
    cache.get("llava-1.5-7b")
    cache.get("llava-1.5-13b")
    assert len(cache) == 2 and ("tiny", "bf16") not in cache


# -- learn, sanity step -------------------------------------------------------------------------

def test_lessons_walk_from_stage1_to_last_n(app, start):
    view, text = run_lesson(app, start.session, "stage1")
    assert view.session.model == "llava-1.5-7b" and view.trainable == LLAVA_7B_PROJECTOR
    assert view.session.workload == LESSONS["stage1"].workload
    view2, text2 = run_lesson(app, view.session, "stage2")
    index = app.cache.get("llava-1.5-7b").index
    vision = count(index, [True] * len(index.params), index.component_params("vision")).total
    assert view2.trainable == LLAVA_7B_TOTAL - vision
    assert f"{units.params(LLAVA_7B_PROJECTOR)} → **{units.params(view2.trainable)}**" in text2
    assert "gradients" in text2
    with pytest.raises(FreezelabError, match="unknown lesson"):
        run_lesson(app, start.session, "nope")


def test_every_number_in_a_lesson_is_computed_and_the_effect_shows(app, start):
    """The lessons quote the estimate they show (recomputed here with the analytic estimator), no number
    comes from anywhere else, and each step moves the memory by gigabytes, not by rounding noise."""
    session, before, seen = start.session, None, {}
    for key, lesson in LESSONS.items():
        view, text = run_lesson(app, session, key)
        index = app.cache.get(lesson_model := view.session.model).index
        assert index.total_params > 10**9, lesson_model  # a model whose memory shows the effect
        res = resolve(lesson.make_plan(), index)
        est = estimate(index, res.mask, lesson.workload, adapters=res.adapters)
        quoted = {units.params(view.trainable), units.nbytes(est.breakdown["optimizer_state"]),
                  units.nbytes(est.breakdown["activations"]), units.nbytes(est.details["gradients_total_bytes"]),
                  units.nbytes(est.activations_by_component["llm"]),
                  units.nbytes(est.activations_by_component["vision"])}
        if "adapters" in est.details:  # the adapter lessons: their settings and what the adapters cost
            a, s = est.details["adapters"], res.plan.lora
            quoted |= {units.params(a["params"]), units.nbytes(a["quantized_bytes"]),
                       units.nbytes(a["quantized_dense_bytes"]), str(s.r), f"{s.alpha:g}"}
        why = re.sub(r"[Ss]tage \d", "", text.split("\n\n")[1])  # preset names are not quantities
        numbers = re.findall(r"\d[\d,]*(?:\.\d+)?(?: ?[KMGT]iB|[KMBT]\b)?", why)
        assert numbers and set(numbers) <= quoted, (key, numbers, quoted)
        assert units.nbytes(est.activations_by_component["llm"]) in why
        before = seen[lesson.compare] if lesson.compare else before  # the LoRA lesson is set against stage 2
        if before is not None:
            moved = abs(est.device_estimate_bytes - before.device_estimate_bytes)
            assert moved > 2**30, (key, moved)  # more than a GiB: visible on the chart and in the text
            assert f"{units.gib(before.device_estimate_bytes)} → **{units.gib(est.device_estimate_bytes)}**" in text
        session, before, seen[key] = view.session, est, est


def test_sanity_step_on_tiny_streams_and_passes(app, start, tiny_model):
    s = handlers.apply_preset(app, start.session, "stage1").session
    s = replace(s, workload=Workload(dtype="fp32"))
    views = [v for _, v in run_step(app, s, "cpu", 2, 1e-3)]
    final = views[-1]
    assert final.report is not None and final.report.passed, final.status
    assert final.report.trainable_params == numel(tiny_model, ("model.multi_modal_projector.",))
    assert len(final.loss_fig.data[0].y) == 2
    assert {row[0] for row in final.checks} == set(final.report.checks)
    assert all(row[1] in ("passed", "warning") for row in final.checks)
    assert "CUDA" in final.memory
    # every update says what it runs for; the verdict is a CSS badge, not an emoji without a font
    assert {v.label for v in views} == {result_html("Sanity step", s, final.report.trainable_params)}
    assert final.status.startswith('<span class="fl-badge fl-ok">passed</span> the plan trains exactly')
    assert views[0].status.startswith('<span class="fl-badge fl-run">running</span>')


def test_sanity_step_cancelled_before_it_starts(app, start):
    cancels = Cancels()
    flag = cancels.start("me")
    assert cancels.cancel("me") and not cancels.cancel("someone else")
    final = list(run_step(app, start.session, "cpu", 2, 1e-3, flag))[-1][1]
    assert final.report.status == "cancelled" and "cancelled" in final.status
    cancels.finish("me", flag)
    assert len(cancels) == 0


def test_sanity_step_refuses_bad_arguments(app, start):
    with pytest.raises(FreezelabError, match="steps"):
        list(run_step(app, start.session, "cpu", 0, 1e-3))
    with pytest.raises(FreezelabError, match="whole number"):
        list(run_step(app, start.session, "cpu", 1.5, 1e-3))


def test_simulated_estimate_next_to_the_analytic_one(app, start):
    from freezelab.compute.flops import step_flops
    from freezelab.memory.simulate import simulate_step
    from freezelab.models import hf_config

    s = handlers.apply_preset(app, start.session, "stage1").session
    seen: list[float] = []
    view = verify_simulate(app, s, lambda f, m: seen.append(f))
    loaded = app.cache.get("tiny")
    mask = resolve(s.plan, loaded.index).mask
    assert view.analytic.peak_bytes == estimate(loaded.index, mask, s.workload).peak_bytes
    direct = simulate_step(hf_config(loaded.source), resolve(s.plan, loaded.index).trainable_names(loaded.index),
                           s.workload)
    assert view.simulated.peak_bytes == direct.peak_bytes
    assert f"| **tensor peak** | {units.nbytes(view.analytic.peak_bytes)} | {units.nbytes(direct.peak_bytes)} |" \
        in view.table
    assert [t.name for t in view.figure.data] == ["analytic", "simulate"]
    flops = step_flops(loaded.index, mask, s.workload)   # FlopCounterMode's count agrees exactly
    assert f"| forward | {units.flops(flops.forward)} | {units.flops(flops.forward)} | +0.00% |" in view.table
    assert f"| backward (with recompute) | {units.flops(flops.backward)} | {units.flops(flops.backward)} | +0.00% |" \
        in view.table
    assert f'data-fl-for="{session_key(s)}"' in view.label and "Simulated for <b>tiny</b>" in view.label
    assert seen and seen[-1] == 1.0
    with pytest.raises(FreezelabError, match="cancelled"):
        verify_simulate(app, s, None, lambda: True)


def test_chart_lines_are_the_common_sizes_at_their_smallest_card():
    from freezelab.memory.gpus import GPUS
    from freezelab.ui.gpu_lines import chart_lines

    lines = chart_lines()
    assert [name for name, _ in lines] == ["24 GB", "40 GB", "48 GB", "80 GB", "141 GB"]
    for name, size in lines:
        same = [g.total_bytes for g in GPUS if g.nominal_gb == int(name.split()[0])]
        assert size == min(same) and all(size <= s for s in same)


def test_load_weights_from_a_checkpoint_and_step_with_them(app, start, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)  # safetensors + config.json: a real checkpoint directory
    view = handlers.load_model(app, start.session, str(tmp_path), weights=True)
    assert view.session.weights and "weights from the checkpoint" in view.header
    s = replace(handlers.apply_preset(app, view.session, "stage1").session, workload=Workload(dtype="fp32"))
    final = list(run_step(app, s, "cpu", 1, 1e-3))[-1][1]
    assert final.report.weights == "checkpoint"
    assert final.report.trainable_params == numel(tiny_model, ("model.multi_modal_projector.",))


def test_a_workload_edit_recomputes_and_sends_only_the_memory_part(app, start):
    """The tree, the counts and the parameter charts do not depend on the workload: a workload edit
    leaves them to the page (a 7B model's tree alone is 34 KB per event)."""
    view = handlers.set_workload(app, start.session, batch=3)
    assert view.memory is not None and view.current is not None and view.session.workload.batch == 3
    assert (view.header, view.summary, view.tree, view.rules, view.warnings, view.params_fig, view.map_fig) == \
        (None,) * 7
    shown = shown_values(view)
    # every output of the event is sent (one left out makes Gradio rebuild its config); how many GPUs is
    # emptied while its section is closed (test_how_many_gpus_is_computed_only_while_its_section_is_open)
    assert set(shown) == set(handlers.view_ids(handlers.WORKLOAD_PARTS))
    assert shown["memory.gpu_count"] is CLEARED and shown["memory.min_gpus"] is CLEARED
    assert "tree.tree" not in shown and "map.plot" not in shown


def test_estimates_are_kept_and_a_batch_edit_computes_one_new_point(app, monkeypatch):
    """The memory curve's batch sizes (1, 4, 16, 64) stay the same when only the batch changes: their
    peaks are kept per index (freezelab.memory.batch_curve), so a batch edit estimates only the new
    batch; estimates are kept too, and each equals a fresh one."""
    from freezelab.memory import batch_curve
    from freezelab.ui import memory_view as mv

    index = app.cache.get("llava-1.5-7b").index
    mask = resolve(preset("stage1"), index).mask
    calls, peaks = [], []
    walk = batch_curve.spread_peaks

    def counted(*args, **kwargs):
        calls.append(args[2].batch)
        return estimate(*args, **kwargs)

    def counted_peaks(index, mask, w, spreads, **kwargs):
        peaks.append(w.batch)
        return walk(index, mask, w, spreads, **kwargs)

    monkeypatch.setattr(mv, "estimate", counted)
    monkeypatch.setattr(batch_curve, "spread_peaks", counted_peaks)
    monkeypatch.setattr(mv._estimates(index), "size", 6)
    w = Workload(batch=2, text_tokens=448)
    first = mv.memory_view(index, mask, w)
    assert calls == [2] and sorted(peaks) == [1, 4, 16, 64]
    calls.clear(), peaks.clear()
    again = mv.memory_view(index, mask, w.with_(batch=3))
    assert calls == [3] and peaks == []  # the curve's other points were kept
    assert again.estimate == estimate(index, mask, w.with_(batch=3))
    assert mv.kept_estimate(index, mask, w) is first.estimate and calls == [3]
    for b in (5, 6, 7, 8, 9):
        mv.memory_view(index, mask, w.with_(batch=b))
    assert len(mv._estimates(index)) == 6  # bounded: the least recently used went first


def test_the_gpu_count_is_kept_whatever_the_workloads_own_gpus(app):
    """The GPU-count chart ignores the workload's own GPU count and sharding: one kept result serves
    them all, and it equals a fresh count (offload and batch still change it)."""
    from freezelab.memory.gpu_count import gpu_count
    from freezelab.ui import memory_view as mv

    index = app.cache.get("llava-1.5-7b").index
    mask = resolve(preset("stage2"), index).mask
    w = Workload(batch=2, text_tokens=448)
    kept = mv.kept_gpu_count(index, mask, w, 2)
    assert mv.kept_gpu_count(index, mask, w.with_(gpus=8, sharding="fsdp"), 2) is kept
    assert kept == gpu_count(index, mask, w.with_(gpus=4, sharding="zero3"), cublas_workspaces=2)
    assert mv.kept_gpu_count(index, mask, w.with_(batch=3), 2) != kept
    assert mv.kept_gpu_count(index, mask, w.with_(offload_optimizer=True), 2) != kept


def test_how_many_gpus_is_computed_only_while_its_section_is_open(app, monkeypatch):
    """Twenty walks of the step per change: a page with the section closed (the default) never pays
    for them, and one that opens it gets the current figures, then on every change."""
    from freezelab.ui import memory_view as mv

    calls, kept = [], mv.kept_gpu_count
    monkeypatch.setattr(mv, "kept_gpu_count", lambda *a: calls.append(a[2]) or kept(*a))
    session = handlers.load_model(app, Session(), "llava-1.5-7b").session
    view = handlers.apply_preset(app, session, "stage2")
    assert (view.memory.gpu_count, view.memory.min_gpus) == (CLEARED, CLEARED)  # emptied, out of sight
    assert shown_values(view)["memory.gpu_count"] is CLEARED and calls == []
    opened = handlers.show_gpu_count(app, view.session, True)
    assert opened.session.gpu_count and "Smallest number of GPUs" in opened.memory.min_gpus
    assert len(calls) == 1 and "memory.gpu_count" in shown_values(opened)
    edited = handlers.set_workload(app, opened.session, batch=3)
    assert calls[-1].batch == 3 and edited.memory.gpu_count is not None
    closed = handlers.show_gpu_count(app, edited.session, False)
    assert closed.memory.gpu_count is CLEARED and len(calls) == 2


def test_a_plans_counts_charts_and_tree_are_shared_by_mask(app):
    """A class clicks the same presets: the second session to show a mask gets the same objects, and
    they equal fresh ones; other tree options make other rows."""
    from freezelab.ui.tree_view import tree_json

    first, second = (handlers.load_model(app, Session(), "llava-1.5-7b").session for _ in range(2))
    a, b = handlers.apply_preset(app, first, "stage2"), handlers.apply_preset(app, second, "stage2")
    assert b.params_fig is a.params_fig and b.map_fig is a.map_fig and b.tree is a.tree and b.summary is a.summary
    index = app.cache.get("llava-1.5-7b").index
    mask = resolve(preset("stage2"), index).mask
    assert a.summary == handlers.summary_html(index, mask) and a.tree == tree_json(index, mask, "", None)
    filtered = handlers.set_tree_options(app, a.session, "mlp", None)
    assert filtered.tree == tree_json(index, mask, "mlp", None) != a.tree


# -- families beyond LLaVA, image sizes ------------------------------------------------------

FAMILY_MODELS = ("qwen2-vl-2b-instruct", "qwen2.5-vl-7b-instruct", "qwen3-vl-2b-instruct", "internvl3-1b-hf",
                 "gemma-3-4b-it", "paligemma2-3b-pt-224", "smolvlm-256m-instruct", "smolvlm2-2.2b-instruct",
                 "idefics3-8b-llama3", "mistral-small-3.1-24b-instruct-2503")


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_every_family_loads_with_its_tree_charts_memory_and_tokens(app, start, name):
    from freezelab.compute.flops import step_flops
    from freezelab.memory.analytic import followed

    view = handlers.apply_preset(app, handlers.load_model(app, start.session, name).session, "stage1")
    index = app.cache.get(name).index
    mask = resolve(preset("stage1"), index).mask
    assert trainable_shown(view) == count(index, mask).trainable
    rows = tree_data(index, mask)["rows"]
    assert len(rows) == len(index.modules) and len(json.loads(view.tree)["rows"]) >= 2
    assert view.params_fig.data and view.map_fig.data
    assert "image tokens" in view.memory.tokens
    why = followed(index, view.session.workload)
    if why is None:
        assert view.memory.estimate.peak_bytes == estimate(index, mask, view.session.workload).peak_bytes
        assert view.compute.flops.counted == step_flops(index, mask, view.session.workload).counted
        assert "Estimated step time" in view.compute.time
    else:
        assert view.compute.flops is None and "No step-time estimate" in view.compute.time
        assert view.memory.estimate is None and "no analytic estimate" in view.memory.verdict
        assert "Run simulated estimate" in view.memory.verdict


def test_image_sizes_box_and_a_dropped_image_set_the_workload(app, start, tmp_path):
    from PIL import Image

    s = handlers.load_model(app, start.session, "llava-v1.6-mistral-7b").session
    view = handlers.set_workload(app, s, image_sizes="336x672, 672x672", images=2)
    assert view.session.workload.image_sizes == ((336, 672), (672, 672))
    assert "1,752" in view.memory.tokens and "2,928" in view.memory.tokens
    path = tmp_path / "photo.png"
    Image.new("RGB", (672, 336)).save(path)  # PIL: (width, height)
    dropped = handlers.set_image(app, view.session, str(path))
    assert dropped.session.workload.image_sizes == ((336, 672),) and dropped.session.workload.images == 2
    assert "Image 336x672" in dropped.status and "3,504 image tokens" in dropped.status
    cleared = handlers.set_workload(app, dropped.session, image_sizes="")
    assert cleared.session.workload.image_sizes == () and cleared.session.workload.image_size is None
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(FreezelabError, match="not a readable image"):
        handlers.set_image(app, view.session, str(tmp_path / "notes.txt"))
    with pytest.raises(WorkloadError, match="height x width"):
        handlers.set_workload(app, s, image_sizes="336 by 672")
    # typed into the box: refused at its field, the results kept (marked out of date)
    refused = handlers.edit_workload(app, s, image_sizes="336 by 672")
    assert isinstance(refused, handlers.WorkloadRefused)
    assert 'data-field="image_sizes"' in refused.error and "height x width" in refused.error
    assert "out of date" in refused.verdict


def test_simulated_estimate_of_what_the_analytic_one_does_not_follow(app, start, tmp_path):
    """A video (frames) is not modelled by the analytic estimate: the memory panel says so, and Verify
    shows the simulated estimate alone."""
    from tiny_families import config

    path = tmp_path / "qwen.json"
    path.write_text(json.dumps(config("qwen2_5_vl")))
    s = handlers.apply_preset(app, handlers.load_model(app, start.session, str(path)).session, "stage1").session
    video = handlers.set_workload(app, s, frames=4, image_sizes="56x56")
    assert video.memory.estimate is None and "does not follow videos" in video.memory.verdict
    view = verify_simulate(app, video.session)
    assert view.analytic is None and view.simulated.peak_bytes > 0
    assert "No analytic column: the analytic estimate does not follow videos" in view.table
    assert [t.name for t in view.figure.data] == ["simulate"]
    assert view.label.startswith('<') and "Simulated for" in view.label
    refused = handlers.edit_workload(app, video.session, batch=0)  # no analytic verdict to mark out of date
    assert "batch" in refused.error and "no analytic estimate" in refused.verdict
