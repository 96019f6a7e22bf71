"""Every checked family beyond LLaVA on tiny random models: the components the classifier finds, the
sanity step (a real CPU forward and backward through the family's own batch layout: every check passes,
so the dead-parameter logic agrees with the family's forward), and the simulated step on fake tensors."""

from __future__ import annotations

import json

import pytest
import torch

from freezelab.components import Component, ComponentError, classify
from freezelab.families import FAMILIES, FeatureRead, config_from_dict, family, model_class
from freezelab.index import build_index
from freezelab.models import index_of
from freezelab.plans import preset
from freezelab.plans import resolve as resolve_plan
from freezelab.sources import resolve
from freezelab.tokens import sample_layouts, workload_sequence
from freezelab.workload import Workload
from tiny_families import CONFIGS, config

INNER = {"qwen2_vl": ["model.visual.merger"], "qwen2_5_vl": ["model.visual.merger"],
         "qwen3_vl": ["model.visual.merger", "model.visual.deepstack_merger_list"]}
OUTER = {"internvl": "model.multi_modal_projector", "gemma3": "model.multi_modal_projector",
         "paligemma": "model.multi_modal_projector", "mistral3": "model.multi_modal_projector",
         "idefics3": "model.connector", "smolvlm": "model.connector"}


def meta_model(kind: str) -> torch.nn.Module:
    with torch.device("meta"):
        return model_class(kind)(config_from_dict(config(kind)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    directory = tmp_path_factory.mktemp("families")
    out = {}
    for kind in CONFIGS:
        path = directory / f"{kind}.json"
        path.write_text(json.dumps(config(kind)))
        out[kind] = resolve(str(path))
    return out


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_projector_found_wherever_it_lives(kind):
    found = classify(meta_model(kind))
    if kind in INNER:
        assert list(found.projector_modules) == INNER[kind] == list(found.inner_projector)
        assert found.vision == "model.visual"
    else:
        assert found.projector_modules == (OUTER[kind],) and not found.inner_projector
    assert found.projector_params == ()
    assert len(found.layers[Component.VISION]) == 2 and len(found.layers[Component.LLM]) == 2
    assert "inside the vision tower" in found.recognised()["projector"] if kind in INNER else True


def test_deepstack_mergers_are_projector_not_vision():
    found = classify(meta_model("qwen3_vl"))
    places = {n: p.component for n, p in found.params.items()}
    assert places["model.visual.deepstack_merger_list.0.linear_fc2.weight"] == Component.PROJECTOR
    assert places["model.visual.merger.linear_fc1.weight"] == Component.PROJECTOR
    assert places["model.visual.blocks.1.mlp.linear_fc1.weight"] == Component.VISION
    assert places["model.visual.pos_embed.weight"] == Component.VISION


def test_what_the_projector_reads_decides_the_dead_parameters():
    assert {family(k).feature_read for k in ("gemma3", "paligemma", "idefics3", "qwen2_5_vl")} == {
        FeatureRead.LAST_HIDDEN_STATE}
    # SigLIP's post-norm feeds Gemma 3's projector (last_hidden_state): alive; a pooling head is not
    cfg = config("gemma3")
    cfg["vision_config"]["vision_use_head"] = True
    with torch.device("meta"):
        index = build_index(model_class("gemma3")(config_from_dict(cfg)), "g", meta=True)
    assert index.dead and all(".head." in name for name in index.dead)
    assert not any("post_layernorm" in name for name in index.dead)
    # the same tower behind LLaVA's hidden_states[-2]: its last layer and post-norm are dead
    assert any("post_layernorm" in n for n in index_of(resolve("llava-1.5-7b")).dead)


def test_an_unchecked_builtin_class_of_the_same_shape_just_works():
    from tiny_families import _siglip, _text

    cfg = {"model_type": "aya_vision", "vision_config": _siglip(56), "text_config": _text("cohere2"),
           "image_token_index": 200, "downsample_factor": 2}
    with torch.device("meta"):
        index = build_index(model_class("aya_vision")(config_from_dict(cfg)), "aya", meta=True)
    assert index.recognised["projector"] == "model.multi_modal_projector"
    assert not family("aya_vision").checked


def test_a_shape_without_a_language_model_is_one_clear_error():
    model = meta_model("qwen2_5_vl")
    model.config.text_config = type(model.config.text_config)()  # no sub-model has this config any more
    with pytest.raises(ComponentError, match="could not find its language model.*found a vision tower at model.visual"):
        classify(model)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("plan", ["full", "stage1"])
def test_sanity_step_passes_every_check(kind, plan, sources):
    from freezelab.step.run import run_step

    workload = Workload(dtype="fp32", text_tokens=8, image_sizes=((112, 84),))
    report = run_step(sources[kind], preset(plan), workload, steps=1, device="cpu")
    failed = {n: c.offending[:3] for n, c in report.checks.items() if not c.passed and c.level == "failure"}
    assert report.passed and not failed, failed
    index = index_of(sources[kind])
    assert report.batch["seq_len"] == workload_sequence(index.config, workload, index.processor)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_simulated_step_runs_the_real_forward(kind, sources):
    from freezelab.memory.simulate import simulate_step
    from freezelab.models import hf_config

    source = sources[kind]
    index = index_of(source)
    workload = Workload(text_tokens=8, images=2, image_sizes=((112, 84), (56, 56)))
    res = resolve_plan(preset("stage2"), index)
    est = simulate_step(hf_config(source), res.trainable_names(index), workload, processor=index.processor)
    layouts = sample_layouts(index.config, workload, index.processor)
    assert est.details["image_tokens_per_sample"] == sum(lay.image_tokens for lay in layouts)
    assert est.details["seq_len"] == workload_sequence(index.config, workload, index.processor)
    assert est.breakdown["activations"] > 0 and est.peak_bytes > est.breakdown["weights"]


def test_qwen_videos_simulate_and_other_families_refuse_frames(sources):
    from freezelab.memory.simulate import SimulationError, simulate_step
    from freezelab.models import hf_config

    index = index_of(sources["qwen2_vl"])
    workload = Workload(text_tokens=8, images=1, frames=4, image_sizes=((56, 56),))
    est = simulate_step(hf_config(sources["qwen2_vl"]), [], workload, processor=index.processor)
    assert est.details["image_tokens_per_sample"] == 4 + 2 * 4  # image 2x2 tokens, video 2 temporal x 2x2
    with pytest.raises(SimulationError, match="frames"):
        simulate_step(hf_config(sources["gemma3"]), [], workload)


def test_every_checked_family_has_a_tiny_model_here():
    assert set(CONFIGS) == {k for k in FAMILIES if not k.startswith(("llava", "vip"))}
