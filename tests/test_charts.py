"""The dashboard's Plotly figures carry exactly the numbers of the index, mask and estimates."""

from __future__ import annotations

import pytest

from freezelab import charts
from freezelab.memory.result import CATEGORIES, MemoryEstimate
from freezelab.models import index_of
from freezelab.plans import preset, resolve
from freezelab.sources import resolve as resolve_source
from freezelab.units import GiB

GPUS = [("24 GB", 24 * 10**9), ("40 GB", 40 * 10**9), ("80 GB", 80 * 10**9), ("141 GB", 141 * 10**9)]


def _estimate(method: str, parts: dict[str, int], overhead: int = 0, phase: str = "backward") -> MemoryEstimate:
    breakdown = {c: parts.get(c, 0) for c in CATEGORIES}
    peak = sum(breakdown.values())
    return MemoryEstimate(method, peak, breakdown, phase, peak + overhead)


def _under(name: str, path: str) -> bool:
    return path == "" or name.startswith(path + ".")


@pytest.fixture(scope="module")
def index_7b():
    return index_of(resolve_source("llava-1.5-7b"))


def test_params_by_component_bars_are_the_component_sums(tiny_model, tiny_index):
    mask = resolve(preset("stage1"), tiny_index).mask
    fig = charts.params_by_component(tiny_index, mask)
    trainable, frozen = fig.data
    # independent: the torch model's own parameters, split by the module each lives in
    named = dict(tiny_model.named_parameters())
    sizes = {
        "vision": sum(p.numel() for n, p in named.items() if n.startswith("model.vision_tower.")),
        "projector": sum(p.numel() for n, p in named.items() if n.startswith("model.multi_modal_projector.")),
        "llm": sum(p.numel() for n, p in named.items()
                   if n.startswith("model.language_model.") or n.startswith("lm_head.")),
    }
    assert list(trainable.x) == [0, sizes["projector"], 0]
    assert list(frozen.x) == [sizes["vision"], 0, sizes["llm"]]
    assert sum(trainable.x) + sum(frozen.x) == sum(p.numel() for p in tiny_model.parameters())


def test_model_map_sizes_and_colours_follow_the_parameter_names(index_7b):
    mask = resolve(preset("last-4"), index_7b).mask
    fig = charts.model_map(index_7b, mask)
    trace = fig.data[0]
    names = [(p.names, p.numel, on) for p, on in zip(index_7b.params, mask)]
    for node, value, colour in zip(trace.ids, trace.values, trace.marker.colors, strict=True):
        path = "" if node == "(model)" else node
        inside = [(n, on) for ns, n, on in names if any(_under(x, path) for x in ns)]
        assert value == sum(n for n, _ in inside)
        assert colour == pytest.approx(sum(n for n, on in inside if on) / value)
    llm_layers = index_7b.layers["llm"]
    assert set(llm_layers) <= set(trace.ids)                      # every decoder layer is a box ...
    assert not any(i.startswith(llm_layers[0] + ".") for i in trace.ids)  # ... with nothing inside it
    assert len(trace.ids) < 120                                  # ~1,000 modules aggregated
    top = [c for c, p in zip(trace.marker.colors, trace.ids) if p in llm_layers[-4:]]
    assert top == [1.0] * 4
    parent = dict(zip(trace.ids, trace.parents))
    # the layer list (a ModuleList) is skipped: layers sit directly in the language model's box
    assert {parent[p] for p in llm_layers} == {"model.language_model"}
    assert "model.language_model.layers" not in parent


def test_model_map_children_never_exceed_their_parent(index_7b):
    trace = charts.model_map(index_7b, [False] * len(index_7b.params)).data[0]
    value = dict(zip(trace.ids, trace.values))
    children: dict[str, int] = {}
    for node, parent in zip(trace.ids, trace.parents):
        if parent:
            children[parent] = children.get(parent, 0) + value[node]
    assert children and all(total <= value[parent] for parent, total in children.items())


def test_memory_breakdown_stacks_every_category_and_the_overhead():
    est = _estimate("analytic", {"weights": 13 * GiB, "gradients": 2 * GiB, "activations": 5 * GiB}, overhead=GiB)
    fig = charts.memory_breakdown(est, GPUS)
    shown = {t.name: t.x[0] for t in fig.data}
    assert shown == {"weights": 13.0, "gradients": 2.0, "activations": 5.0, "CUDA context + allocator cache": 1.0}
    assert sum(shown.values()) == pytest.approx(est.device_estimate_bytes / GiB)
    axis_max = fig.layout.xaxis.range[1]
    assert axis_max >= est.device_estimate_bytes / GiB
    lines = sorted(s.x0 for s in fig.layout.shapes)
    # 21 GiB needed: the 24 GB card is the first that fits, so the lines stop there
    assert lines == [24 * 10**9 / GiB]


def test_memory_breakdown_of_a_huge_plan_shows_every_card_below_it():
    est = _estimate("analytic", {"weights": 300 * GiB})
    fig = charts.memory_breakdown(est, GPUS)
    assert len(fig.layout.shapes) == len(GPUS)
    assert fig.layout.xaxis.range[1] == pytest.approx(300 * 1.15)


def test_memory_curve_plots_device_and_tensor_peaks_in_order():
    ests = [_estimate("analytic", {"activations": b * GiB}, overhead=GiB) for b in (1, 2, 4)]
    fig = charts.memory_curve([1, 2, 4], ests, GPUS, current=2)
    device, tensors = fig.data
    assert list(device.x) == [1, 2, 4]
    assert list(device.y) == [2.0, 3.0, 5.0]
    assert list(tensors.y) == [1.0, 2.0, 4.0]
    assert any(s.x0 == 2 and s.x1 == 2 for s in fig.layout.shapes)  # the current batch is marked


def test_estimate_comparison_has_one_bar_group_per_method():
    a = _estimate("analytic", {"weights": 4 * GiB, "activations": 2 * GiB})
    s = _estimate("simulate", {"weights": 4 * GiB, "activations": 3 * GiB, "workspace": GiB // 2})
    fig = charts.estimate_comparison([a, s])
    assert [t.name for t in fig.data] == ["analytic", "simulate"]
    assert list(fig.data[0].x) == ["weights", "activations", "workspace"]
    assert list(fig.data[0].y) == [4.0, 2.0, 0.0]
    assert list(fig.data[1].y) == [4.0, 3.0, 0.5]


def test_step_charts_number_steps_from_one():
    fig = charts.line_chart([2.5, 2.25, 2.0], title="loss", y_label="loss")
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[0].y) == [2.5, 2.25, 2.0]
    bars = charts.grouped_bars({"llm layer 30": 0.5, "llm layer 31": 0.25}, title="g", y_label="norm", log=True)
    assert list(bars.data[0].x) == ["llm layer 30", "llm layer 31"]
    assert bars.layout.yaxis.type == "log"


def test_figures_carry_no_heavy_template(tiny_index):
    """A named template would add ~6 KB to every figure sent on every click."""
    fig = charts.params_by_component(tiny_index, [False] * len(tiny_index.params))
    assert len(fig.to_json()) < 3000
