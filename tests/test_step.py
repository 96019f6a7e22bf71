"""The sanity step on real tiny models (CPU): every check passing on honest runs and failing on
deliberately broken ones, failure handling, and nothing left allocated."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from tiny_configs import TINY, write

import freezelab.step.gate as gate_module
import freezelab.step.live as live_module
from freezelab.checks import MAX_NAMES
from freezelab.errors import SourceError
from freezelab.memory import analytic
from freezelab.memory.result import MemoryEstimate
from freezelab.models import build, index_of
from freezelab.optimizers import OptimizerError, make_optimizer
from freezelab.plans import PRESETS, Plan, apply, preset, resolve
from freezelab.sources import resolve as resolve_source
from freezelab.step import Status, StepError, StepRecord, StepReport, Weights, WontFitError, iter_step, run_step
from freezelab.workload import Workload

FP32 = Workload(dtype="fp32")
VISION = TINY["vision_config"]
TEXT = TINY["text_config"]
PROJECTOR_PARAMS = (VISION["hidden_size"] * TEXT["hidden_size"] + TEXT["hidden_size"]
                    + TEXT["hidden_size"] ** 2 + TEXT["hidden_size"])


def _preset_names() -> list[str]:
    return [n if n != "last-n" else "last-2" for n in PRESETS]


def _failed(report) -> set[str]:
    return {name for name, c in report.checks.items() if not c.passed}


def _names(index, component: str) -> set[str]:
    return {p.name for p in index.params if p.component == component}


# -- honest runs ----------------------------------------------------------------------

@pytest.mark.parametrize("name", _preset_names())
def test_every_preset_passes_on_tiny(tiny_source, tiny_index, name):
    report = run_step(tiny_source, preset(name), FP32)
    assert report.passed and report.status == "ok" and len(report.steps) == 2
    model = build(tiny_source, device="cpu", dtype="fp32")
    apply(preset(name), model, tiny_index)
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert all(s.peak_allocated_bytes is None and s.peak_reserved_bytes is None for s in report.steps)
    expected_warnings = {"dead_parameters"} if name in ("full", "vision-projector") else set()
    assert _failed(report) == expected_warnings


def test_projector_count_from_the_config(tiny_source):
    report = run_step(tiny_source, preset("stage1"), FP32)
    assert report.trainable_params == PROJECTOR_PARAMS == 6272
    assert report.trainable_tensors == 4


def test_full_vision_tower_reports_the_dead_last_layer_with_the_cause(tiny_source, tiny_index):
    report = run_step(tiny_source, preset("vision-projector"), FP32)
    dead = report.checks["dead_parameters"]
    last = VISION["num_hidden_layers"] - 1
    expected = {p.name for p in tiny_index.params
                if p.component == "vision" and (p.layer == last or ".post_layernorm." in p.name)}
    assert dead.level == "warning" and dead.count == len(expected) == 18
    assert set(dead.offending) == expected
    assert all("vision_feature_layer=-2" in dead.causes[n] for n in dead.offending if f"layers.{last}." in n)
    assert report.passed  # the architecture's dead layer is a warning, not a broken plan
    layers = report.grad_norms["layers"]["vision"]
    assert layers[last] == 0.0 and all(v > 0 for v in layers[:last])


def test_same_seed_same_losses_other_seed_other_losses(tiny_source):
    a, b, c = (run_step(tiny_source, preset("stage2"), FP32, seed=s) for s in (3, 3, 4))
    assert [s.loss for s in a.steps] == [s.loss for s in b.steps]
    assert [s.loss for s in a.steps] != [s.loss for s in c.steps]
    assert a.steps[1].loss != a.steps[0].loss  # something trained


def test_frozen_plan_leaves_the_loss_unchanged(tiny_source):
    report = run_step(tiny_source, preset("frozen"), FP32)
    assert report.steps[0].loss == report.steps[1].loss and report.passed


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fused", "sgd", "sgd-momentum", "adafactor"])
def test_each_optimizer_runs_and_passes(tiny_source, optimizer):
    report = run_step(tiny_source, preset("stage2"), FP32.with_(optimizer=optimizer), lr=1e-3)
    assert report.passed, {n: c.message for n, c in report.checks.items() if not c.passed}


def test_optimizer_settings():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert make_optimizer("adamw-fused", p, 0.1).defaults["fused"] is True
    assert make_optimizer("sgd-momentum", p, 0.1).defaults["momentum"] == 0.9
    assert isinstance(make_optimizer("adafactor", p, 0.1), torch.optim.Adafactor)
    assert make_optimizer("adamw", [], 0.1) is None


def test_autocast_and_eager_attention_are_applied(tiny_source):
    seen = {}

    def look(model, optimizer):
        seen["attn"] = model.config._attn_implementation

    report = run_step(tiny_source, preset("stage2"), FP32.with_(autocast="bf16", attn="eager"), prepare=look)
    assert seen["attn"] == "eager" and report.passed


def test_a_float16_checkpoint_dtype_does_not_override_the_workload_dtype(tmp_path):
    """Shipped LLaVA configs say torch_dtype float16; the language model must still be built in bf16."""
    import json

    cfg = json.loads(write(tmp_path, "llava").read_text()) | {"torch_dtype": "float16"}
    cfg["text_config"]["torch_dtype"] = "float16"  # as in llava-1.5-7b's config
    (tmp_path / "fp16.json").write_text(json.dumps(cfg))
    dtypes = set()
    report = run_step(resolve_source(str(tmp_path / "fp16.json")), preset("stage2"), Workload(dtype="bf16"),
                      prepare=lambda model, opt: dtypes.update(p.dtype for p in model.parameters()))
    assert dtypes == {torch.bfloat16} and report.status == "ok"


def test_small_cpu_runs_use_one_thread_and_restore_the_setting(tiny_source):
    before = torch.get_num_threads()
    seen = []
    run_step(tiny_source, preset("stage1"), FP32, prepare=lambda model, opt: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before


def test_events_stream_in_order(tiny_source):
    events = list(iter_step(tiny_source, preset("stage1"), FP32, steps=3))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("step") == 3 and kinds.count("done") == 1
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [e.record.step for e in events if e.kind == "step"] == [1, 2, 3]
    assert events[-1].report.passed


# -- deliberately broken runs ------------------------------------------------------------

def _projector(model):
    return [p for n, p in model.named_parameters() if "multi_modal_projector" in n]


def test_zeroed_projector_gradient_fails(tiny_source, tiny_index):
    def zero(model, optimizer):
        for p in _projector(model):
            p.register_hook(torch.zeros_like)

    report = run_step(tiny_source, preset("stage2"), FP32, prepare=zero)
    assert not report.passed
    assert _failed(report) == {"gradients_nonzero"}
    assert set(report.checks["gradients_nonzero"].offending) == _names(tiny_index, "projector")
    assert report.grad_norms["component"]["projector"] == 0.0


def test_nan_gradient_fails(tiny_source, tiny_index):
    name = "model.multi_modal_projector.linear_1.weight"

    def poison(model, optimizer):
        dict(model.named_parameters())[name].register_hook(lambda g: g * float("nan"))

    # one step: in a second one the NaN weights it produced would poison every gradient
    report = run_step(tiny_source, preset("stage1"), FP32, steps=1, prepare=poison)
    assert _failed(report) == {"gradients_finite"}
    assert report.checks["gradients_finite"].offending == (name,)


def test_frozen_weight_modified_behind_the_plans_back_fails(tiny_source):
    name = "model.language_model.norm.weight"

    def tamper(model, optimizer):
        weight = dict(model.named_parameters())[name]

        def nudge(opt, args, kwargs):  # e.g. an EMA or weight-tying helper updating the wrong tensor
            with torch.no_grad():
                weight.add_(1e-3)

        optimizer.register_step_post_hook(nudge)

    report = run_step(tiny_source, preset("stage1"), FP32, prepare=tamper)
    assert _failed(report) == {"frozen_unchanged"}
    assert report.checks["frozen_unchanged"].offending == (name,)


def test_optimizer_missing_a_trainable_parameter_fails(tiny_source):
    def drop(model, optimizer):
        optimizer.param_groups[0]["params"].pop()

    report = run_step(tiny_source, preset("stage1"), FP32, prepare=drop)
    c = report.checks["optimizer"]
    assert not c.passed and c.offending == ("model.multi_modal_projector.linear_2.bias",)
    assert "not in the optimizer" in c.causes[c.offending[0]]
    # it got a gradient and never moved: the weights check sees it too
    assert report.checks["weights_moved"].offending == c.offending


def test_optimizer_holding_a_frozen_parameter_fails(tiny_source):
    name = "model.language_model.norm.weight"

    def extra(model, optimizer):
        optimizer.add_param_group({"params": [dict(model.named_parameters())[name]]})

    report = run_step(tiny_source, preset("stage1"), FP32, prepare=extra)
    c = report.checks["optimizer"]
    assert not c.passed and c.offending == (name,) and "frozen by the plan" in c.causes[name]


def test_requires_grad_changed_behind_the_plan_fails(tiny_source):
    name = "model.language_model.norm.weight"

    def flip(model, optimizer):
        dict(model.named_parameters())[name].requires_grad_(True)

    report = run_step(tiny_source, preset("stage1"), FP32, prepare=flip)
    assert report.checks["plan_applied"].offending == (name,)
    assert not report.passed


def test_nan_loss_fails(tiny_source):
    def poison(model, optimizer):
        model.lm_head.register_forward_hook(lambda m, a, out: out * float("nan"))

    report = run_step(tiny_source, preset("frozen"), FP32, prepare=poison)
    assert _failed(report) == {"loss_finite"} and report.steps[0].loss != report.steps[0].loss


def test_bf16_with_a_small_lr_flags_weights_that_did_not_move(tiny_source, tiny_index):
    report = run_step(tiny_source, preset("full"), Workload(dtype="bf16"), lr=1e-5)
    moved = report.checks["weights_moved"]
    # Norm weights start at exactly 1.0: an AdamW step of about lr = 1e-5 is far below half the
    # bf16 spacing at 1.0 (2^-8), so these cannot change; in fp32 (spacing 2^-23) they do.
    model = build(tiny_source, device="cpu", dtype="bf16")
    ones = {n for n, p in model.named_parameters() if bool(torch.all(p == 1))} - set(tiny_index.dead)
    assert ones and moved.count <= MAX_NAMES and ones <= set(moved.offending)
    assert not moved.passed and moved.level == "warning" and "below the resolution of bf16" in moved.message
    assert report.passed  # a warning, not a failure
    assert run_step(tiny_source, preset("full"), FP32, lr=1e-5).checks["weights_moved"].passed


def test_text_only_batch_leaves_the_projector_without_gradient(tiny_source, tiny_index):
    report = run_step(tiny_source, preset("stage1"), FP32.with_(images=0))
    c = report.checks["gradients_present"]
    assert set(c.offending) == _names(tiny_index, "projector")
    assert all("text-only batch" in cause for cause in c.causes.values())
    assert report.input_grad_hooks == 0 and not report.passed


def test_checkpointing_hides_the_text_only_error_and_the_step_still_catches_it(tiny_source, tiny_index):
    report = run_step(tiny_source, preset("stage1"), FP32.with_(images=0, grad_ckpt=True))
    c = report.checks["gradients_present"]
    assert set(c.offending) == _names(tiny_index, "projector")
    assert all("would not raise" in cause for cause in c.causes.values())
    assert report.input_grad_hooks == 2  # the LLM's token embedding and the vision patch embedding
    assert any("input-embedding requires_grad hooks" in w for w in report.warnings)


def test_checkpointing_without_images_problem_passes(tiny_source):
    assert run_step(tiny_source, preset("last-2"), FP32.with_(grad_ckpt=True)).passed
    assert run_step(tiny_source, preset("stage1"), FP32.with_(grad_ckpt=True)).passed


def test_reentrant_checkpointing_with_frozen_inputs_loses_the_gradients(tiny_source, tiny_index):
    def reentrant(model, optimizer):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        model.disable_input_require_grads()

    plan = preset("last-2").then("train", "@lm_head")  # lm_head keeps the loss differentiable
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):  # torch says so, quietly
        report = run_step(tiny_source, plan, FP32, prepare=reentrant)
    c = report.checks["gradients_present"]
    expected = {p.name for p in tiny_index.params if p.component == "llm" and p.layer in (2, 3)}
    assert set(c.offending) == expected
    assert all("reentrant gradient checkpointing" in cause for cause in c.causes.values())
    assert report.checks["gradients_nonzero"].passed  # lm_head itself still learns


def test_tied_weights_train_once_and_are_named_with_their_alias(tmp_path):
    source = resolve_source(str(write(tmp_path, "llava-tied")))
    report = run_step(source, preset("lm-head"), FP32)
    assert report.passed and report.trainable_tensors == 1
    assert report.trainable_params == TEXT["vocab_size"] * TEXT["hidden_size"]
    assert any("one tied tensor" in w for w in report.warnings)

    def zero(model, optimizer):
        model.lm_head.weight.register_hook(torch.zeros_like)

    broken = run_step(source, preset("lm-head"), FP32, prepare=zero)
    assert broken.checks["gradients_nonzero"].offending == (
        "model.language_model.embed_tokens.weight (= lm_head.weight)",)


@pytest.mark.parametrize("kind", ["llava-siglip", "next", "next-video", "onevision", "vipllava"])
def test_every_class_trains_and_its_dead_parameters_match_the_index(tmp_path, kind):
    source = resolve_source(str(write(tmp_path, kind)))
    report = run_step(source, preset("full"), Workload(dtype="fp32", image_size=57))
    assert report.status == "ok" and report.passed, {n: c.message for n, c in report.checks.items()}
    index = index_of(source, dtype="fp32")
    dead = report.checks["dead_parameters"]
    # what the index predicts statically is exactly what the real backward left without gradient
    assert dead.count == len(index.dead) > 0 and set(dead.offending) <= set(index.dead)


# -- refusals before anything is allocated ---------------------------------------------------

@pytest.fixture()
def no_build(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was built although the run was refused")

    monkeypatch.setattr(live_module, "build", fail)


@pytest.mark.parametrize("options,match", [
    (dict(steps=0), "steps must be"),
    (dict(steps=101), "steps must be"),
    (dict(lr=0.0), "learning rate"),
    (dict(lr=float("nan")), "learning rate"),
    (dict(device="tpu"), "device must be"),
    (dict(workload=Workload(dtype="fp32", gpus=2)), "one device"),
    (dict(workload=Workload(dtype="fp32", sharding="zero3")), "one device"),
    (dict(workload=Workload(dtype="fp32", offload_optimizer=True)), "one device"),
])
def test_bad_options_are_refused(tiny_source, no_build, options, match):
    workload = options.pop("workload", FP32)
    with pytest.raises(StepError, match=match):
        run_step(tiny_source, preset("stage1"), workload, **options)


def test_unavailable_cuda_and_8bit_optimizer_are_refused(tiny_source, no_build):
    if not torch.cuda.is_available():
        with pytest.raises(StepError, match="no CUDA device"):
            run_step(tiny_source, preset("stage1"), FP32, device="cuda")
    with pytest.raises(OptimizerError, match="adamw-8bit"):
        run_step(tiny_source, preset("stage1"), FP32.with_(optimizer="adamw-8bit"))


def test_weights_of_an_architecture_are_refused(no_build):
    with pytest.raises(StepError, match="without weights"):
        run_step(resolve_source("llava-1.5-7b"), preset("stage1"), FP32, weights=True)


def test_estimate_over_free_memory_is_refused(tiny_source, no_build, monkeypatch):
    huge = MemoryEstimate("analytic", 1 << 60, {}, "backward", 1 << 60)
    monkeypatch.setattr(gate_module, "estimate", lambda index, mask, workload, adapters=None: huge)
    with pytest.raises(WontFitError, match="by the memory estimate"):
        run_step(tiny_source, preset("stage1"), FP32)


def test_estimate_over_free_ram_is_refused(tiny_source, tiny_index, monkeypatch):
    need = analytic.estimate(tiny_index, resolve(preset("stage1"), tiny_index).mask, FP32).peak_bytes
    monkeypatch.setattr(gate_module, "available_ram", lambda: need - 1)
    with pytest.raises(WontFitError, match=r"needs about 0\.1 GiB at its peak \(backward\) by the memory estimate, "
                       r"but only 0\.1 GiB of free RAM is left"):
        run_step(tiny_source, preset("stage1"), FP32)
    monkeypatch.setattr(gate_module, "available_ram", lambda: need)
    assert run_step(tiny_source, preset("stage1"), FP32, steps=1).status == "ok"  # exactly enough: it runs


def test_the_estimate_is_reported_next_to_each_step(tiny_source, tiny_index):
    workload = FP32.with_(batch=2)
    expected = analytic.estimate(tiny_index, resolve(preset("stage2"), tiny_index).mask, workload)
    report = run_step(tiny_source, preset("stage2"), workload)
    assert report.estimate["peak_bytes"] == expected.peak_bytes
    assert all(s.estimate_bytes == expected.peak_bytes for s in report.steps)
    assert all(s.relative_error is None for s in report.steps)  # no CUDA measurement on CPU


# -- failure handling and cleanup -------------------------------------------------------------

class _Spy:
    """Weak references to the run's model and optimizer (a strong one would keep them alive)."""

    def __init__(self, fault=None):
        self.model = self.optimizer = None
        self.fault = fault

    def __call__(self, model, optimizer):
        self.model, self.optimizer = weakref.ref(model), weakref.ref(optimizer)
        if self.fault:
            self.fault(model)

    def released(self) -> bool:
        return self.model() is None and self.optimizer() is None


def test_nothing_is_left_allocated_after_a_run(tiny_source):
    spy = _Spy()
    run_step(tiny_source, preset("full"), FP32, prepare=spy)
    assert spy.released()  # without a gc.collect(): no reference cycle keeps them


def _oom_on_second_forward(model):
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    model.register_forward_pre_hook(hook)


def test_out_of_memory_is_caught_reported_and_released(tiny_source):
    spy = _Spy(_oom_on_second_forward)
    report = run_step(tiny_source, preset("stage2"), FP32, prepare=spy)
    assert report.status == "out_of_memory" and not report.passed and report.checks == {}
    assert [s.error is None for s in report.steps] == [True, False]
    assert report.steps[1].error.startswith("out of memory in step 2: CUDA out of memory")
    assert "out of memory in step 2" in report.error and "Memory was released" in report.error
    gc.collect()
    assert spy.released()


def test_cancel_stops_between_steps_and_releases(tiny_source):
    spy = _Spy()
    done = []
    report = run_step(tiny_source, preset("stage2"), FP32, steps=5, prepare=spy,
                      progress=lambda e: done.append(e.kind), cancel=lambda: done.count("step") >= 2)
    assert report.status == "cancelled" and len(report.steps) == 2 and not report.passed
    assert "before step 3 of 5" in report.error
    assert spy.released()


def test_a_set_event_cancels_before_the_first_step(tiny_source):
    flag = threading.Event()
    flag.set()
    report = run_step(tiny_source, preset("stage1"), FP32, cancel=flag)
    assert report.status == "cancelled" and report.steps == []


def test_abandoned_generator_releases_the_model(tiny_source):
    spy = _Spy()
    events = iter_step(tiny_source, preset("stage2"), FP32, steps=4, prepare=spy)
    for event in events:
        if event.kind == "step":
            break
    assert spy.model() is not None  # still running, suspended at the yield
    events.close()
    assert spy.released()


def test_json_report_is_plain_and_nan_free(tiny_source):
    import json

    def poison(model, optimizer):
        model.lm_head.register_forward_hook(lambda m, a, out: out * float("nan"))

    data = run_step(tiny_source, preset("stage1"), FP32, prepare=poison).to_dict()
    text = json.dumps(data, allow_nan=False)  # raises if a NaN slipped through
    assert json.loads(text)["steps"][0]["loss"] is None and data["passed"] is False


def test_record_and_report_to_dict_by_hand():
    record = StepRecord(2, float("inf"), 0.25, 1100, 1536, 1000)
    assert record.steady and record.relative_error == 0.1
    assert record.to_dict() == {"step": 2, "loss": None, "seconds": 0.25, "peak_allocated_bytes": 1100,
                                "peak_reserved_bytes": 1536, "estimate_bytes": 1000, "error": None,
                                "steady": True, "relative_error": 0.1}
    assert StepRecord(1, 2.5, 0.1, None, None, 1000).relative_error is None  # CPU: nothing measured
    report = StepReport("m", "C", "cpu", "cpu", Weights.CHECKPOINT, {}, {}, {}, 5, 1, 9, 1e-3, 0, steps=[record],
                        grad_norms={"component": {"llm": float("nan"), "vision": None}, "layers": {"llm": [1.5]}},
                        status=Status.OUT_OF_MEMORY, error="out of memory in step 2")
    data = report.to_dict()
    assert type(data["status"]) is str and type(data["weights"]) is str
    assert {k: data[k] for k in ("weights", "status", "passed", "grad_norms", "estimate")} == {
        "weights": "checkpoint", "status": "out_of_memory", "passed": False,
        "grad_norms": {"component": {"llm": None, "vision": None}, "layers": {"llm": [1.5]}}, "estimate": {}}
    assert list(data) == ["model", "model_class", "device", "device_name", "weights", "workload", "batch", "plan",
                          "trainable_params", "trainable_tensors", "total_params", "lr", "seed", "estimate",
                          "time_estimate", "input_grad_hooks", "warnings", "status", "error", "seconds",
                          "adapter_params", "base_params", "measured_seconds", "steps", "checks", "grad_norms",
                          "passed"]
    assert (data["adapter_params"], data["base_params"]) == (0, 9)
    assert data["measured_seconds"] == 0.25  # the last steady-state step's time, beside time_estimate


def test_plan_with_nothing_matching_is_refused_before_building(tiny_source, no_build):
    from freezelab.errors import SelectorError

    with pytest.raises(SelectorError):
        run_step(tiny_source, Plan().then("train", "no.such.module"), FP32)
