"""The time model (freezelab.compute.timing, comm) on hand-built FLOPs, and where it shows up:
the card list, the estimate command, the sanity step report and the dashboard."""

from __future__ import annotations

import json
import math

import pytest

from freezelab.compute.comm import per_step
from freezelab.compute.flops import Flops, Split, Traffic
from freezelab.compute.timing import (
    CAUSAL_SHARE,
    Efficiency,
    TimingError,
    beside_measured,
    math_mode,
    step_time,
    training_time,
)
from freezelab.memory.gpus import GPUS, Link, Math, find_gpu
from freezelab.units import duration, flops as fmt_flops
from freezelab.workload import Workload

H100 = next(g for g in GPUS if g.name == "H100 80 GB")
A100_40 = next(g for g in GPUS if g.name == "A100 40 GB")
PEAK = 989.4e12      # H100 SXM dense bf16
HBM = 3350e9         # H100 SXM bytes/s


def hand_flops(forward=0, backward_input=0, causal=Split(), traffic=Traffic()) -> Flops:
    split = Split(forward, backward_input)
    return Flops(split, {}, (), Split(), causal, 0, traffic, 0)


def test_matmul_time_is_flops_over_the_stated_fraction_of_peak():
    f = hand_flops(forward=int(PEAK), backward_input=int(PEAK))
    t = step_time(f, H100, Workload())
    assert t.forward == pytest.approx(2.0) and t.backward == pytest.approx(2.0)   # 50% of peak
    assert t.seconds == pytest.approx(4.0) and t.matmul == pytest.approx(4.0)
    faster = step_time(f, H100, Workload(), Efficiency(mfu=1.0))
    assert faster.seconds == pytest.approx(2.0)


def test_causal_attention_is_charged_at_half():
    f = hand_flops(forward=int(PEAK), causal=Split(forward=int(PEAK) // 2))
    t = step_time(f, H100, Workload(), Efficiency(mfu=1.0))
    assert t.forward == pytest.approx(1.0 - (1 - CAUSAL_SHARE) * 0.5)


def test_bandwidth_bound_bytes_and_the_optimizer_at_the_memory_fraction():
    f = hand_flops(traffic=Traffic(forward=int(HBM), backward=int(2 * HBM), optimizer=int(HBM)))
    t = step_time(f, H100, Workload(), Efficiency(bandwidth=0.5))
    assert (t.forward, t.backward, t.optimizer) == pytest.approx((2.0, 4.0, 2.0))
    assert t.matmul == 0


def test_fp32_weights_without_autocast_use_the_fp32_peak():
    assert math_mode(Workload(dtype="fp32")) is Math.FP32
    assert math_mode(Workload(dtype="fp32", autocast="fp16")) is Math.FP16
    assert math_mode(Workload(dtype="fp16")) is Math.FP16 and math_mode(Workload()) is Math.BF16
    f = hand_flops(forward=int(67e12))
    assert step_time(f, H100, Workload(dtype="fp32"), Efficiency(mfu=1.0)).seconds == pytest.approx(1.0)


def test_ring_collectives_per_sharding():
    t = Traffic(weights=800, backward_weights=400, gradients=160)
    assert per_step(t, Workload()).total == 0
    ddp = per_step(t, Workload(gpus=8))
    assert (ddp.forward, ddp.backward) == (0, 2 * 160 * 7 // 8)
    assert per_step(t, Workload(gpus=8, sharding="zero2")) == ddp       # reduce-scatter + all-gather
    z3 = per_step(t, Workload(gpus=8, sharding="zero3"))
    assert (z3.forward, z3.backward) == (800 * 7 // 8, (400 + 160) * 7 // 8)
    off = per_step(t, Workload(gpus=4, sharding="zero2", offload_optimizer=True))
    assert off.offload == 2 * 160 // 4


def test_only_communication_longer_than_its_compute_is_exposed():
    link = 450e9 * 0.7                              # H100 NVLink, one direction, at 70%
    grads = int(2 * link)                           # all-reduce sends 2 x 7/8 of it: 3.5 s on the wire
    f = hand_flops(backward_input=int(PEAK), traffic=Traffic(gradients=grads))   # 2 s of backward
    t = step_time(f, H100, Workload(gpus=8))
    assert t.link is Link.NVLINK
    assert t.communication == pytest.approx(2 * 7 / 8 * 2)
    assert t.exposed_communication == pytest.approx(3.5 - 2.0)
    assert t.seconds == pytest.approx(2.0 + 1.5)
    pcie = step_time(f, H100, Workload(gpus=8), link=Link.PCIE)
    assert pcie.communication == pytest.approx(3.5 * 450 / 64)


def test_training_time_counts_steps_of_every_gpu():
    f = hand_flops(forward=int(PEAK))
    w = Workload(batch=4, gpus=8)
    t = step_time(f, H100, w.with_(gpus=1))
    run = training_time(t, w, samples=1000, epochs=3)
    assert run.steps == math.ceil(3000 / 32) == 94
    assert run.seconds == pytest.approx(94 * t.seconds)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_an_efficiency_outside_0_1_is_refused(bad):
    with pytest.raises(TimingError, match="efficiency must be a number above 0 and at most 1"):
        Efficiency(mfu=bad)


@pytest.mark.parametrize("samples", [0, -5, 2.5, 10**13])
def test_a_bad_sample_count_is_refused(samples):
    with pytest.raises(TimingError, match="samples must be a whole number"):
        training_time(step_time(hand_flops(forward=1), H100, Workload()), Workload(), samples)


def test_every_card_has_its_peaks_and_a_source():
    for g in GPUS:
        spec = g.compute
        assert spec is not None and g.name.split()[0] in spec.source.replace("GeForce ", "")
        assert spec.tflops[Math.BF16] == spec.tflops[Math.FP16] > spec.tflops[Math.TF32] >= spec.tflops[Math.FP32]
    assert A100_40.compute.tflops[Math.BF16] == 312 and A100_40.compute.memory_gbs == 1555
    assert H100.compute.link_gbs(Link.NVLINK) == 450 and H100.compute.link_gbs(Link.PCIE) == 64
    rtx = find_gpu("NVIDIA GeForce RTX 4090")
    assert rtx.compute.default_link is Link.PCIE and rtx.compute.link_gbs(Link.NVLINK) == 32


@pytest.mark.parametrize(("device", "card"), [
    ("NVIDIA H100 80GB HBM3", "H100 80 GB"), ("NVIDIA A100-SXM4-40GB", "A100 40 GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 80 GB"), ("NVIDIA L40S", "L40S 48 GB"), ("NVIDIA H200", "H200 141 GB"),
    ("NVIDIA H100 PCIe", None), ("NVIDIA A100-PCIE", None), ("Tesla V100-SXM2-16GB", None)])
def test_device_names_map_to_known_cards_only_when_unambiguous(device, card):
    found = find_gpu(device)
    assert (found.name if found else None) == card


def test_the_estimate_beside_a_measured_step():
    f = hand_flops(forward=int(PEAK))
    on_cpu = beside_measured(f, Workload(), "cpu")
    assert on_cpu["seconds"] is None and "CUDA" in on_cpu["note"]
    h100 = beside_measured(f, Workload(gpus=4), "NVIDIA H100 80GB HBM3")
    assert h100["gpu"] == "H100 80 GB" and h100["seconds"] == pytest.approx(2.0)   # one GPU: no collectives
    assert beside_measured(f, Workload(), "NVIDIA B200")["seconds"] is None


def test_units():
    assert fmt_flops(783.9e12) == "783.9 TFLOP" and fmt_flops(36.7e6) == "36.7 MFLOP" and fmt_flops(12) == "12 FLOP"
    assert [duration(x) for x in (4e-6, 0.035, 6.234, 750, 3.8 * 3600, 3 * 86400)] == [
        "4 µs", "35 ms", "6.23 s", "12.5 min", "3.8 h", "3.0 days"]


# -- where the figures show up -----------------------------------------------------------------------

def test_estimate_json_has_flops_and_step_seconds(capsys):
    from freezelab.cli import main
    from freezelab.compute.flops import step_flops
    from freezelab.models import index_of
    from freezelab.plans import preset, resolve
    from freezelab.sources import resolve as resolve_source

    assert main(["estimate", "tiny", "--preset", "stage2", "--json", "--mfu", "0.25", "--samples", "100",
                 "--batch", "4", "--gpus", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    index = index_of(resolve_source("tiny"))
    w = Workload(batch=4, gpus=2)
    f = step_flops(index, resolve(preset("stage2"), index).mask, w)
    assert data["flops"]["counted"] == f.counted and data["flops"]["backward_weight"] == f.split.backward_weight
    eff = Efficiency(mfu=0.25)
    assert data["step_seconds"] == {g.name: pytest.approx(step_time(f, g, w, eff).seconds) for g in GPUS}
    h100 = next(r for r in data["time"]["gpus"] if r["gpu"] == "H100 80 GB")
    assert h100["training"]["steps"] == math.ceil(100 / 8) and h100["link"] == "nvlink"


def test_estimate_refuses_an_efficiency_above_one(capsys):
    from freezelab.cli import main

    assert main(["estimate", "tiny", "--mfu", "2"]) == 2
    assert "mfu efficiency must be a number above 0 and at most 1" in capsys.readouterr().err


def test_dashboard_efficiency_control_rescales_the_matmul_time():
    from freezelab.ui.handlers import App, initial_view, set_efficiency

    app = App()
    view = initial_view(app)
    slower = set_efficiency(app, view.session, mfu=0.25, bandwidth=0.7)
    assert slower.session.efficiency == Efficiency(mfu=0.25)
    assert "matmuls at 25% of each card's dense bf16 peak" in slower.compute.time
    with pytest.raises(TimingError):
        set_efficiency(app, view.session, mfu=0, bandwidth=0.7)


def test_compute_lesson_numbers_are_computed():
    from freezelab.compute.flops import step_flops
    from freezelab.plans import preset, resolve
    from freezelab.ui.handlers import App, initial_view
    from freezelab.ui.learn_view import WORKLOAD, run_lesson

    app = App()
    view, text = run_lesson(app, initial_view(app).session, "compute")
    index = app.loaded(view.session).index
    s1 = step_flops(index, resolve(preset("stage1"), index).mask, WORKLOAD)
    s2 = step_flops(index, resolve(preset("stage2"), index).mask, WORKLOAD)
    assert f"**{s1.counted / 1e12:.1f}**" in text and f"**{s2.counted / 1e12:.1f}**" in text
    assert f"runs {s1.counted / s2.counted:.0%} of its FLOPs" in text
    assert view.compute.flops.counted == s1.counted   # the lesson leaves stage 1 on the dashboard


def test_verify_tab_shows_measured_beside_estimated():
    from freezelab.step.report import StepRecord, StepReport, Weights
    from freezelab.ui.verify_view import time_text

    steps = [StepRecord(1, 2.0, 0.9, None, None, 1000), StepRecord(2, 1.9, 0.25, None, None, 1000)]
    report = StepReport("m", "C", "cuda:0", "NVIDIA H100 80GB HBM3", Weights.RANDOM, {}, {}, {}, 5, 1, 9, 1e-3, 0,
                        steps=steps, time_estimate=beside_measured(hand_flops(forward=int(PEAK)), Workload(),
                                                                   "NVIDIA H100 80GB HBM3"))
    assert report.measured_seconds == 0.25   # the steady-state step, not the warm-up
    assert time_text(report).startswith("Step time: measured 0.25 s, estimated **2.00 s** (estimated for one H100")
    report.time_estimate = beside_measured(hand_flops(), Workload(), "cpu")
    assert time_text(report) == ("Step time: measured 0.25 s; the time model estimates CUDA GPUs; a CPU step is not "
                                 "comparable.")
