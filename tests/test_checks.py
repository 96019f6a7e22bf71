"""The per-parameter checks on hand-made observations of the tiny model's index."""

from __future__ import annotations

import math

import pytest

from freezelab.checks import (
    MAX_NAMES,
    Context,
    Observation,
    all_passed,
    grad_norms,
    no_gradient_cause,
    run_checks,
)


def _obs(index, mask, **changes):
    n = len(index.params)
    norms = [[1.0 if on else None for on in mask]] * 2
    base = dict(mask=list(mask), requires_grad=list(mask), norms=norms, changed=list(mask),
                in_optimizer=[1 if on else 0 for on in mask], foreign_in_optimizer=0, losses=[1.0, 0.9])
    base.update(changes)
    assert len(base["mask"]) == n
    return Observation(**base)


def _ctx(index, **changes):
    base = dict(images=1, dead=index.dead, input_grad_hooks=False, reentrant_checkpointing=False,
                loss_required_grad=True, dtype="fp32", lr=1e-5)
    base.update(changes)
    return Context(**base)


def _mask(index, component):
    return [p.component == component for p in index.params]


def _first(index, component):
    return next(i for i, p in enumerate(index.params) if p.component == component)


def test_a_clean_observation_passes_every_check(tiny_index):
    checks = run_checks(tiny_index, _obs(tiny_index, _mask(tiny_index, "projector")), _ctx(tiny_index))
    assert all(c.passed for c in checks.values()) and all_passed(checks)
    assert set(checks) == {"plan_applied", "optimizer", "frozen_unchanged", "gradients_present", "gradients_finite",
                           "gradients_nonzero", "loss_finite", "dead_parameters", "weights_moved"}


def test_requires_grad_flipped_behind_the_plan(tiny_index):
    mask = _mask(tiny_index, "projector")
    flags = list(mask)
    i = _first(tiny_index, "llm")
    flags[i] = True
    c = run_checks(tiny_index, _obs(tiny_index, mask, requires_grad=flags), _ctx(tiny_index))["plan_applied"]
    assert not c.passed and c.offending == (tiny_index.params[i].name,) and c.count == 1


def test_optimizer_missing_holding_frozen_twice_and_foreign(tiny_index):
    mask = _mask(tiny_index, "projector")
    counts = [1 if on else 0 for on in mask]
    missing, frozen = _first(tiny_index, "projector"), _first(tiny_index, "llm")
    twice = [i for i, on in enumerate(mask) if on][1]
    counts[missing], counts[frozen], counts[twice] = 0, 1, 2
    c = run_checks(tiny_index, _obs(tiny_index, mask, in_optimizer=counts, foreign_in_optimizer=2),
                   _ctx(tiny_index))["optimizer"]
    names = tiny_index.params
    assert not c.passed and c.count == 3 + 2
    assert set(c.offending) == {names[missing].name, names[frozen].name, names[twice].name}
    assert "not in the optimizer" in c.causes[names[missing].name]
    assert "frozen by the plan" in c.causes[names[frozen].name]
    assert "more than once" in c.causes[names[twice].name]
    assert "2 tensors that are not parameters" in c.message


def test_only_foreign_optimizer_tensors_still_fail(tiny_index):
    mask = _mask(tiny_index, "projector")
    c = run_checks(tiny_index, _obs(tiny_index, mask, foreign_in_optimizer=1), _ctx(tiny_index))["optimizer"]
    assert not c.passed and c.count == 1 and c.offending == ()


def test_changed_frozen_tensor_fails(tiny_index):
    mask = _mask(tiny_index, "projector")
    changed = list(mask)
    i = _first(tiny_index, "vision")
    changed[i] = True
    c = run_checks(tiny_index, _obs(tiny_index, mask, changed=changed), _ctx(tiny_index))["frozen_unchanged"]
    assert not c.passed and c.offending == (tiny_index.params[i].name,)


def test_missing_nonfinite_and_zero_gradients_are_told_apart(tiny_index):
    mask = _mask(tiny_index, "llm")
    on = [i for i, m in enumerate(mask) if m]
    step = [1.0 if m else None for m in mask]
    step[on[0]], step[on[1]], step[on[2]], step[on[3]] = None, math.nan, math.inf, 0.0
    checks = run_checks(tiny_index, _obs(tiny_index, mask, norms=[step]), _ctx(tiny_index))
    name = [tiny_index.params[i].name for i in on]
    assert checks["gradients_present"].offending == (name[0],)
    assert set(checks["gradients_finite"].offending) == {name[1], name[2]}
    assert checks["gradients_nonzero"].offending == (name[3],)
    assert not all_passed(checks)


def test_a_gradient_missing_in_one_step_only_still_fails(tiny_index):
    mask = _mask(tiny_index, "projector")
    i = _first(tiny_index, "projector")
    first = [1.0 if m else None for m in mask]
    second = list(first)
    second[i] = None
    c = run_checks(tiny_index, _obs(tiny_index, mask, norms=[first, second]), _ctx(tiny_index))
    assert c["gradients_present"].offending == (tiny_index.params[i].name,)


def test_dead_parameters_are_a_warning_with_the_index_reason(tiny_index):
    mask = _mask(tiny_index, "vision")
    norms = [[None if (m and p.name in tiny_index.dead) else (1.0 if m else None)
              for m, p in zip(mask, tiny_index.params)]]
    checks = run_checks(tiny_index, _obs(tiny_index, mask, norms=norms), _ctx(tiny_index))
    dead = checks["dead_parameters"]
    assert dead.level == "warning" and not dead.passed and all_passed(checks)
    assert dead.count == len(tiny_index.dead) == 18
    numel = sum(p.numel for p in tiny_index.params if p.name in tiny_index.dead)
    assert f"{numel:,} parameters" in dead.message
    assert checks["gradients_present"].passed


def test_offending_names_are_capped_with_the_full_count(tiny_index):
    mask = [True] * len(tiny_index.params)
    changed = [False] * len(mask)
    c = run_checks(tiny_index, _obs(tiny_index, mask, changed=changed), _ctx(tiny_index))["weights_moved"]
    assert c.level == "warning" and len(c.offending) == MAX_NAMES
    assert c.count == len(tiny_index.params)  # every tensor got a gradient and none moved


def test_weights_moved_ignores_tensors_without_a_usable_gradient(tiny_index):
    mask = _mask(tiny_index, "projector")
    i = _first(tiny_index, "projector")
    step = [1.0 if m else None for m in mask]
    step[i] = 0.0
    changed = list(mask)
    changed[i] = False  # a zero gradient explains it: not a resolution warning
    c = run_checks(tiny_index, _obs(tiny_index, mask, norms=[step], changed=changed), _ctx(tiny_index))
    assert c["weights_moved"].passed and not c["gradients_nonzero"].passed


def test_nonfinite_loss_fails(tiny_index):
    mask = _mask(tiny_index, "projector")
    c = run_checks(tiny_index, _obs(tiny_index, mask, losses=[1.0, math.nan]), _ctx(tiny_index))["loss_finite"]
    assert not c.passed and "step(s) 2" in c.message


@pytest.mark.parametrize("ctx,component,expected", [
    (dict(images=0), "projector", "text-only batch"),
    (dict(images=0, input_grad_hooks=True), "projector", "would not raise"),
    (dict(reentrant_checkpointing=True), "llm", "reentrant gradient checkpointing"),
    (dict(loss_required_grad=False), "llm", "backward never ran"),
    (dict(), "llm", "not reached by backward"),
])
def test_no_gradient_causes(tiny_index, ctx, component, expected):
    i = _first(tiny_index, component)
    assert expected in no_gradient_cause(tiny_index, i, _ctx(tiny_index, **ctx))


def test_dead_reason_comes_first(tiny_index):
    i = tiny_index.by_name[next(iter(tiny_index.dead))]
    assert no_gradient_cause(tiny_index, i, _ctx(tiny_index, images=0)) == tiny_index.dead[tiny_index.params[i].name]


def test_grad_norms_combine_by_component_and_layer(tiny_index):
    mask = [p.component != "vision" for p in tiny_index.params]
    norms = [None] * len(mask)
    layer0 = [i for i, p in enumerate(tiny_index.params) if p.component == "llm" and p.layer == 0]
    proj = [i for i, p in enumerate(tiny_index.params) if p.component == "projector"]
    for i in layer0:
        norms[i] = 2.0
    for i in proj:
        norms[i] = 3.0
    out = grad_norms(tiny_index, mask, norms)
    assert out["component"]["vision"] is None
    assert out["component"]["projector"] == pytest.approx(3.0 * math.sqrt(len(proj)))
    assert out["component"]["llm"] == pytest.approx(2.0 * math.sqrt(len(layer0)))
    assert out["layers"]["llm"][0] == pytest.approx(2.0 * math.sqrt(len(layer0)))
    assert out["layers"]["llm"][1:] == [0.0, 0.0, 0.0]  # trainable, no gradient
    assert out["layers"]["vision"] == [None, None, None]
