"""The dashboard's Plotly figures carry exactly the numbers of the index, mask and estimates."""

from __future__ import annotations

import pytest

from freezelab import charts
from freezelab.compute.flops import step_flops
from freezelab.memory.gpu_count import COUNTS
from freezelab.memory.result import CATEGORIES, MemoryEstimate
from freezelab.models import index_of
from freezelab.plans import preset, resolve
from freezelab.sources import resolve as resolve_source
from freezelab.units import GiB
from freezelab.workload import Workload

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
    assert shown == {"weights": 13.0, "gradients": 2.0, "activations": 5.0, "CUDA context + cache": 1.0}
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


def test_memory_curve_ticks_only_the_whole_batch_sizes_it_computed():
    ests = [_estimate("analytic", {"activations": b * GiB}, overhead=GiB) for b in (1, 4, 6, 16)]
    fig = charts.memory_curve([1, 4, 6, 16], ests, GPUS, current=6)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.tickmode == "array"
    assert list(fig.layout.xaxis.tickvals) == [1, 4, 6, 16]
    assert list(fig.layout.xaxis.ticktext) == ["1", "4", "6", "16"]
    lo, hi = fig.layout.xaxis.range
    assert 10**lo < 1 and 10**hi > 16  # room around the first and last point, nothing else ticked
    assert not fig.layout.annotations or all("even batch" not in a.text for a in fig.layout.annotations)


def test_memory_curve_says_so_when_even_batch_1_does_not_fit():
    """A 72B full fine-tune: one point, at batch 1, ticked as 1 (not 0.125 ... 8 around it)."""
    huge = _estimate("analytic", {"weights": 700 * GiB}, overhead=GiB)
    fig = charts.memory_curve([1], [huge], GPUS, current=1)
    assert list(fig.layout.xaxis.tickvals) == [1]
    says = [a.text for a in fig.layout.annotations if "even batch" in a.text]
    assert says == ["even batch 1 needs 701.0 GiB:<br>more than the largest common GPU"]


def test_small_estimates_are_drawn_in_small_units_without_the_cuda_context():
    """The tiny model: 66.7 MiB of tensors under 0.75 GiB of CUDA context. Drawn in MiB, context left out
    by default (it would hide every tensor), included on request as its own hatched segment."""
    est = _estimate("analytic", {"weights": 539 * 2**10, "activations": 587 * 2**10, "workspace": 65 * 2**20},
                    overhead=768 * 2**20)
    assert charts.context_by_default(est) is False
    fig = charts.memory_breakdown(est, GPUS, context=False)
    shown = {t.name: t.x[0] for t in fig.data}
    assert shown == {"weights": pytest.approx(539 / 1024), "activations": pytest.approx(587 / 1024), "workspace": 65}
    assert fig.layout.xaxis.ticksuffix == " MiB" and not fig.layout.shapes  # no 24 GB line on a 70 MiB axis
    with_context = charts.memory_breakdown(est, GPUS, context=True)
    context = [t for t in with_context.data if t.name == "CUDA context + cache"]
    assert len(context) == 1 and context[0].x[0] == 768 and context[0].marker.pattern.shape == "/"
    curve = charts.memory_curve([1], [est], GPUS, context=False)
    assert [t.name for t in curve.data] == ["tensors"] and curve.layout.yaxis.ticksuffix == " MiB"
    big = _estimate("analytic", {"weights": 13 * GiB, "activations": 25 * GiB}, overhead=3 * GiB)
    assert charts.context_by_default(big) is True


def test_gpu_line_labels_never_overlap_and_merge_when_too_close():
    """Lines 24/40/48 GB on a 700 GiB axis are a few pixels apart: one label for them, and no two
    labels closer than their own width (x) or height (y) at the smallest plot the page draws."""
    scale = charts.Scale.for_bytes(700 * GiB)
    chart_gpus = [("24 GB", 24 * 10**9), ("40 GB", 40 * 10**9), ("48 GB", 46 * 10**9), ("80 GB", 80 * 10**9),
                  ("141 GB", 141 * 10**9)]
    for axis in ("x", "y"):
        shapes, notes = charts.gpu_lines(chart_gpus, 800 * GiB, scale, axis)
        assert len(shapes) == 5  # every line is drawn
        assert sorted(n for note in notes for n in note["text"].removesuffix(" GB").split("/")) == \
            sorted(["24", "40", "48", "80", "141"])  # every size is named once
        px = charts.MIN_PLOT_PX[axis] / scale(800 * GiB)
        where = sorted(note[axis] for note in notes)
        if axis == "y":
            assert all((b - a) * px >= charts.LABEL_PX for a, b in zip(where, where[1:], strict=False))
        else:
            widths = {note[axis]: len(note["text"]) * charts.LABEL_CHAR_PX for note in notes}
            assert all((b - a) * px >= (widths[a] + widths[b]) / 2 for a, b in zip(where, where[1:], strict=False))
    _, apart = charts.gpu_lines(chart_gpus, 150 * GiB, charts.Scale.for_bytes(150 * GiB), "y")
    assert [n["text"] for n in apart] == ["24/40/48 GB", "80 GB", "141 GB"]


def test_log_axes_tick_a_few_round_values_only():
    one = charts.log_axis([3.7])
    assert one["tickvals"] == [3.0, 5.0] and one["ticktext"] == ["3", "5"]
    decade = charts.log_axis([0.2, 1.5])
    assert decade["tickvals"] == pytest.approx([0.2, 0.5, 1.0, 2.0])
    wide = charts.log_axis([0.001, 0.5, 30])
    assert wide["tickvals"] == pytest.approx([0.001, 0.01, 0.1, 1.0, 10.0])
    assert all(10**wide["range"][0] <= t <= 10**wide["range"][1] for t in wide["tickvals"])


def test_layer_bars_put_layers_on_a_number_axis_with_whole_ticks():
    fig = charts.layer_bars({"vision": {0: 0.1, 1: 0.2}, "llm": {30: 0.5, 31: 0.25}}, title="g", y_label="norm",
                            log=True)
    assert [t.name for t in fig.data] == ["vision tower", "language model"]
    assert list(fig.data[1].x) == [30, 31] and list(fig.data[1].y) == [0.5, 0.25]
    assert fig.layout.xaxis.dtick == 5 and fig.layout.yaxis.type == "log"
    few = charts.layer_bars({"llm": {2: 0.5, 3: 0.6}}, title="g", y_label="norm")
    assert few.layout.xaxis.dtick == 1 and few.layout.showlegend is False


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
    bars = charts.grouped_bars({"projector": 0.5, "llm": 0.25}, title="g", y_label="norm", log=True)
    assert list(bars.data[0].x) == ["projector", "llm"]
    assert bars.layout.yaxis.type == "log" and list(bars.layout.yaxis.ticktext) == ["0.15", "0.2", "0.3", "0.5", "0.7"]


def test_figures_carry_no_heavy_template(tiny_index):
    """A named template would add ~6 KB to every figure sent on every click."""
    fig = charts.params_by_component(tiny_index, [False] * len(tiny_index.params))
    assert len(fig.to_json()) < 3000


def test_every_chart_is_valid_plotly_and_validation_would_send_the_same(index_7b):
    """`charts.figure` skips plotly's per-property validation (4-8 ms a figure, four per click): every
    chart the dashboard draws must still pass it, and validating must change nothing that is sent."""
    import json

    import plotly.graph_objects as go

    mask = resolve(preset("last-4"), index_7b).mask
    est = _estimate("analytic", {"weights": 13 * GiB, "activations": 4 * GiB}, overhead=GiB // 2)
    small = _estimate("simulate", {"weights": 70 * 2**20, "gradients": 2 * 2**20}, overhead=GiB)
    figures = [
        charts.params_by_component(index_7b, mask), charts.model_map(index_7b, mask),
        charts.memory_breakdown(est, GPUS), charts.memory_breakdown(small, GPUS, context=False),
        charts.memory_curve([1, 4, 16], [small, est, est], GPUS, current=4),
        charts.estimate_comparison([est, small]), charts.line_chart([2.5, 2.25], title="loss", y_label="loss"),
        charts.grouped_bars({"projector": 0.5, "llm": 0.25}, title="g", y_label="norm", log=True),
        charts.layer_bars({"llm": {30: 0.5, 31: 0.25}}, title="l", y_label="norm", log=True),
        charts.gpu_count_chart(COUNTS, {"ddp": [2 * GiB] * len(COUNTS), "fsdp": [GiB] * len(COUNTS)}, GPUS, current=2),
        charts.compute_breakdown(step_flops(index_7b, mask, Workload(grad_ckpt=True))),
    ]
    for fig in figures:
        sent = json.loads(fig.to_json())
        validated = go.Figure({"data": sent["data"], "layout": sent["layout"]})  # raises on an invalid property
        assert json.loads(validated.to_json()) == sent
