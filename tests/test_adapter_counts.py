"""Adapter counts from the index equal PEFT's on every shipped config: PEFT builds the adapted model itself
(get_peft_model on the meta device), with target modules the test finds on the torch model, not with
freezelab's config; its get_nb_trainable_parameters() and adapter tensors must equal what freezelab
computes from the index alone."""

from __future__ import annotations

import re

import pytest
import torch

from freezelab.anatomy import summary
from freezelab.models import build
from freezelab.plan_files import from_text
from freezelab.plans import resolve
from freezelab.sources import known_names
from freezelab.sources import resolve as resolve_source

pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402


def _path(model, target):
    return next(n for n, m in model.named_modules() if m is target)


# the towers and projectors of each family, by their transformers attribute names; Qwen's mergers sit inside
# its vision tower but are its projector
LLM_NAMES = ("language_model", "text_model")
VISION_NAMES = ("vision_tower", "visual", "vision_model")
PROJECTOR_PARTS = ("multi_modal_projector.", "connector.", ".merger.", ".deepstack_merger_list.")


def _towers(model):
    inner = model.model
    llm = next(getattr(inner, n) for n in LLM_NAMES if hasattr(inner, n))
    vision = next(getattr(inner, n) for n in VISION_NAMES if hasattr(inner, n))
    return llm, vision


def _is_projector(name):
    return any(part in name for part in PROJECTOR_PARTS) or name == "model.image_newline"


def _linears_under(model, prefix):
    return [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and n.startswith(prefix + ".")
            and not _is_projector(n + ".")]


# (freezelab plan, PEFT LoraConfig kwargs from the torch model, also train the projector in full)
def _recipe(model, llm, vision):
    return ("adapter r=128 alpha=256\ntrain @projector\nlora @llm",
            {"r": 128, "lora_alpha": 256, "target_modules": _linears_under(model, llm)}, True)


def _dora_qv(model, llm, vision):
    qv = [n for n in _linears_under(model, llm) if n.endswith(("q_proj", "v_proj"))]
    return (f"adapter r=16 alpha=32 dora=true\nlora re:{re.escape(llm)}\\..*\\.(q|v)_proj\\.weight",
            {"r": 16, "lora_alpha": 32, "use_dora": True, "target_modules": qv}, False)


def _vision_and_llm(model, llm, vision):
    targets = _linears_under(model, vision) + _linears_under(model, llm)
    return ("lora @vision r=4 alpha=16\nlora @llm",
            {"r": 8, "lora_alpha": 8, "target_modules": targets,
             "rank_pattern": {re.escape(vision) + r"\..*": 4}, "alpha_pattern": {re.escape(vision) + r"\..*": 16}},
            False)


VARIANTS = (_recipe, _dora_qv, _vision_and_llm)


def _peft_counts(model, kwargs, train_projector):
    with torch.device("meta"):
        peft_model = get_peft_model(model, LoraConfig(**kwargs))
    base = peft_model.get_base_model()
    if train_projector:  # LLaVA-1.5's recipe: the projector trains in full beside the adapters
        for n, p in base.named_parameters():
            if _is_projector(n):
                p.requires_grad_(True)
    adapters = {n: tuple(p.shape) for n, p in base.named_parameters() if ".lora_" in n}
    return peft_model.get_nb_trainable_parameters(), adapters, peft_model


@pytest.mark.parametrize("name", ["tiny", *known_names()])
def test_counts_equal_peft(name, shipped_indexes, tiny_index):
    index = tiny_index if name == "tiny" else shipped_indexes[name]
    model = build(resolve_source(name), device="meta")
    llm, vision = (_path(model, tower) for tower in _towers(model))
    for variant in VARIANTS:
        text, kwargs, train_projector = variant(model, llm, vision)
        (trainable, total), peft_adapters, peft_model = _peft_counts(model, kwargs, train_projector)
        res = resolve(from_text(text), index)
        adapted, mask = res.adapted(index)
        mine = summary(adapted, mask)
        assert (mine["trainable_params"], mine["total_params"]) == (trainable, total), (name, variant.__name__)
        assert mine["adapter_params"] == sum(a.numel(res.adapters.dora) for a in res.adapters.layers)
        assert {p.name: p.shape for p in adapted.params if p.part == "adapter"} == peft_adapters
        model = peft_model.unload()


def test_llava15_recipe_numbers(shipped_indexes):
    """The issue's numbers: LLaVA-1.5's LoRA recipe on llava-1.5-7b, as PEFT prints them."""
    index = shipped_indexes["llava-1.5-7b"]
    res = resolve(from_text("adapter r=128 alpha=256\ntrain @projector\nlora @llm"), index)
    s = summary(*res.adapted(index))
    assert (s["trainable_params"], s["total_params"]) == (340_795_392, 7_383_242_752)
    assert (s["adapter_params"], s["base_params"]) == (319_815_680, 7_063_427_072)
