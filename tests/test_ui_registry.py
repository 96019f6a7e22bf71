"""The dashboard's components are registered by id in one place: every event reads and fills
registered components only, and what a view shows is derived from its fields, never listed twice."""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import SimpleNamespace

import pytest

from freezelab.model_cache import ModelCache
from freezelab.plans import PRESETS
from freezelab.session import Session
from freezelab.ui import handlers
from freezelab.ui.handlers import VIEW_IDS, View
from freezelab.ui.learn_view import LESSONS
from freezelab.ui.memory_view import WORKLOAD_IDS
from freezelab.ui.registry import Registry, RegistryError, shown, shown_ids, shown_values
from freezelab.ui.verify_view import StepView

gr = pytest.importorskip("gradio")

# The order API clients index the outputs of every view event in (tests/test_app_api.py).
API_ORDER = ("top.state", "top.status", "top.header", "summary.counts", "tree.tree", "plan.rules", "plan.warnings",
             "summary.params_plot", "map.plot", "memory.plot", "memory.verdict", "memory.notes", "memory.curve",
             "memory.context", "memory.error", "memory.gpu_count", "memory.min_gpus", "memory.tokens", "compute.plot",
             "compute.time", "verify.now", "adapter.r", "adapter.alpha", "adapter.dropout", "adapter.dora",
             "adapter.quant", "adapter.quant_type", "adapter.double_quant")
VIEW_EVENTS = ("train", "freeze", "undo", "reset", "filter_tree", "set_image", "import_plan",
               "load_model", "load_known", "add_adapters", "set_adapters",
               *(f"preset_{n.replace('-', '_')}" for n in PRESETS),
               *(f"lesson_{k.replace('-', '_')}" for k in LESSONS))


@pytest.fixture(scope="module")
def dashboard():
    from freezelab.ui.blocks import create_dashboard

    app = handlers.App(cache=ModelCache())
    demo, ui = create_dashboard(app)
    return app, demo, ui


def test_every_event_reads_and_fills_registered_components_only(dashboard):
    _, demo, ui = dashboard
    registered = {id(ui[i]) for i in ui}
    used = [(fn.api_name, c) for fn in demo.fns.values() for c in (*fn.inputs, *fn.outputs)]
    assert len(used) > 400  # every event was looked at, inputs and outputs
    assert [(api, type(c).__name__) for api, c in used if id(c) not in registered] == []


def test_view_events_fill_the_view_components_in_field_order(dashboard):
    _, demo, ui = dashboard
    assert VIEW_IDS == API_ORDER
    view = ui.components(VIEW_IDS)
    by_api = {fn.api_name: fn for fn in demo.fns.values()}
    for api in VIEW_EVENTS:
        assert by_api[api].outputs[:len(view)] == view, api
    assert by_api["load_model"].outputs[len(view):] == [ui["model.known"]]
    # a workload edit changes the memory and compute parts and the Verify tab's key only: nothing else is sent
    assert by_api["set_workload"].outputs == ui.components(
        ("top.state", "top.status", "memory.plot", "memory.verdict", "memory.notes", "memory.curve", "memory.context",
         "memory.error", "memory.gpu_count", "memory.min_gpus", "memory.tokens", "compute.plot", "compute.time",
         "verify.now"))
    assert by_api["lesson_stage1"].outputs[len(view):] == ui.components(
        ("learn.text", "model.known", *WORKLOAD_IDS))


def test_a_handler_error_changes_only_the_status(dashboard):
    from freezelab.ui.shared import Shared

    app, demo, ui = dashboard
    sh = Shared(app, ui, demo)
    start = handlers.build_view(app, Session(gpu_count=True))  # every part shown: how many GPUs too
    with pytest.warns(UserWarning, match="matches no parameter"):  # gr.Warning outside a request
        out = sh.show(lambda: handlers.add_rule(app, start.session, "train", "nonexistent_module"))
    assert list(out) == [ui["top.status"]]  # Gradio leaves every other output as it is
    assert "matches no parameter" in out[ui["top.status"]]
    view = handlers.apply_preset(app, start.session, "stage1")
    ok = sh.show(lambda: view)
    assert list(ok) == ui.components(VIEW_IDS)
    assert ok[ui["top.state"]] is view.session and ok[ui["plan.rules"]] == view.rules
    assert ok[ui["memory.verdict"]] == view.memory.verdict and ok[ui["map.plot"]] is view.map_fig


def test_ids_are_unique_and_a_wrong_id_says_which():
    ui = Registry()
    rules, warnings = object(), object()
    ui.add("plan", {"rules": rules, "warnings": warnings})
    with pytest.raises(RegistryError, match="registered twice: plan.rules"):
        ui.add("plan", {"selector": object(), "rules": object()})
    assert "plan.selector" not in ui and ui["plan.rules"] is rules  # nothing half-registered
    with pytest.raises(RegistryError, match="'plan.rule'; closest: plan.rules"):
        ui["plan.rule"]
    with pytest.raises(RegistryError, match="'plan.note'"):
        ui.values({"plan.rules": "x", "plan.note": "y"})
    assert ui.values({"plan.warnings": "w", "plan.rules": "r"}) == {warnings: "w", rules: "r"}


def test_a_new_panel_is_reached_through_its_ids_alone():
    """What adding a panel takes: its builder registers components with a wiring (which may reach
    components laid out after it), and a view field declares the id that shows it."""
    ui = Registry()
    table, rules = object(), object()
    wired = []
    ui.add("adapter", {"table": table}, wire=lambda sh: wired.append(sh.ui["plan.rules"]))
    ui.add("plan", {"rules": rules})
    for elem_id in VIEW_IDS:  # the rest of the page
        if elem_id not in ui:
            panel, name = elem_id.split(".", 1)
            ui.add(panel, {name: object()})
    ui.wire(SimpleNamespace(ui=ui))
    assert wired == [rules]

    @dataclass(kw_only=True)
    class AdapterView(View):
        adapters: str = shown("adapter.table")

    assert shown_ids(AdapterView) == (*VIEW_IDS, "adapter.table")
    base = handlers.build_view(handlers.App(cache=ModelCache()), Session(gpu_count=True))
    view = AdapterView(**{f.name: getattr(base, f.name) for f in fields(View)}, adapters="r=8 on q_proj")
    values = shown_values(view)
    assert list(values) == [*VIEW_IDS, "adapter.table"] and ui.values(values)[table] == "r=8 on q_proj"


def test_a_step_update_leaves_what_it_does_not_have_yet():
    figure = object()
    assert shown_values(StepView("⏳ step 1 of 2", figure, None)) == {"step.status": "⏳ step 1 of 2",
                                                                     "step.loss": figure}
    done = shown_values(StepView("passed", figure, None, [["loss_finite", "passed", "", ""]], "CUDA only"))
    assert done == {"step.status": "passed", "step.loss": figure,
                    "step.checks": [["loss_finite", "passed", "", ""]], "step.memory": "CUDA only"}
