"""The component classifier on the tiny model of every supported class (meta device): roots,
layer stacks and each parameter's place, found by object; and its use by the index and the
simulator."""

from __future__ import annotations

import pytest
import torch

from freezelab.components import COMPONENTS, Component, ComponentError, Part, Place, classify
from freezelab.errors import FreezelabError
from freezelab.families import config_from_dict, model_class
from tiny_configs import config as tiny_config

KINDS = ["llava", "llava-tied", "llava-siglip", "next", "next-video", "onevision", "vipllava"]
V, P, L = Component.VISION, Component.PROJECTOR, Component.LLM


def meta_model(kind: str) -> torch.nn.Module:
    cfg = config_from_dict(tiny_config(kind))
    with torch.device("meta"):
        return model_class(cfg.model_type)(cfg)


def expected_place(name: str) -> Place:
    """Where a tiny model's parameter belongs, from transformers 5.x's names (written out here)."""
    if name.startswith("model.vision_tower."):
        if ".encoder.layers." in name:
            return Place(V, Part.VISION_LAYERS, int(name.split(".encoder.layers.")[1].split(".")[0]))
        return Place(V, Part.VISION_OTHER)
    if name.startswith("lm_head."):
        return Place(L, Part.LM_HEAD)
    if name.startswith("model.language_model.embed_tokens."):
        return Place(L, Part.EMBEDDINGS)
    if name.startswith("model.language_model.layers."):
        return Place(L, Part.LLM_LAYERS, int(name.split(".")[3]))
    if name.startswith("model.language_model."):
        return Place(L, Part.LLM_OTHER)
    return Place(P, Part.PROJECTOR)


@pytest.mark.parametrize("kind", KINDS)
def test_roots_layers_and_every_parameter(kind: str) -> None:
    model = meta_model(kind)
    found = classify(model)
    assert (found.vision, found.language, found.embeddings, found.lm_head) == (
        "model.vision_tower", "model.language_model", "model.language_model.embed_tokens", "lm_head")
    assert found.layers == {V: [f"model.vision_tower.encoder.layers.{i}" for i in range(3)],
                            L: [f"model.language_model.layers.{i}" for i in range(4)]}
    assert found.projector_modules == ("model.multi_modal_projector",)
    newline = ("model.image_newline",) if kind in ("next", "next-video", "onevision") else ()
    assert found.projector_params == newline
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert found.params == {n: expected_place(n) for n in names}
    assert found.roots() == {"vision": ["model.vision_tower"],
                             "projector": ["model.multi_modal_projector", *newline],
                             "llm": ["model.language_model", "lm_head"], "lm_head": ["lm_head"],
                             "embeddings": ["model.language_model.embed_tokens"]}


def test_tied_head_keeps_its_own_place() -> None:
    found = classify(meta_model("llava-tied"))
    assert found.params["lm_head.weight"] == Place(L, Part.LM_HEAD)
    assert found.params["model.language_model.embed_tokens.weight"] == Place(L, Part.EMBEDDINGS)


def test_found_by_object_not_by_name() -> None:
    model = meta_model("next")
    inner = model.model
    inner.add_module("eyes", inner.vision_tower)      # the tower under another name
    del inner.vision_tower
    found = classify(model)
    assert found.vision == "model.eyes"
    assert found.layers[V][0] == "model.eyes.encoder.layers.0"
    assert found.params["model.eyes.embeddings.patch_embedding.weight"] == Place(V, Part.VISION_OTHER)
    assert found.projector_modules == ("model.multi_modal_projector",)


def test_a_model_without_its_towers_is_one_clear_error() -> None:
    model = meta_model("llava")
    model.config.vision_config = type(model.config.vision_config)()  # no sub-model has this config
    with pytest.raises(ComponentError, match="could not find its vision tower") as err:
        classify(model)
    assert isinstance(err.value, FreezelabError)


def test_components_are_str_choices() -> None:
    assert COMPONENTS == ("vision", "projector", "llm")
    with pytest.raises(ValueError):
        Component("vison")


@pytest.mark.parametrize("kind", ["llava-tied", "next"])
def test_index_and_simulator_use_the_same_places(kind: str) -> None:
    from freezelab.index import build_index
    from freezelab.memory.simulate import model as sim_model
    from freezelab.memory.simulate.hooks import param_labels
    from freezelab.memory.simulate.run import Run
    from freezelab.workload import Workload

    index = build_index(meta_model(kind), kind, meta=True)
    run = Run(config_from_dict(tiny_config(kind)), set(), Workload())
    sim_model.build(run)
    labels = param_labels(run)
    for p in index.params:
        for name in p.names[:1]:  # the name both walk first (a tied tensor is counted once)
            assert labels[name] == ("lm_head" if p.part == "lm_head" else p.component)
    assert index.roots == {str(k): v for k, v in run.parts.roots().items()}
