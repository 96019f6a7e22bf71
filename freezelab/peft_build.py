"""Adapters on a real (or fake-tensor) model, with PEFT itself: `get_peft_model` with the `LoraConfig` of
the plan (freezelab.peft_targets), then the plan's own trainable flags again (get_peft_model freezes every
base parameter; a projector trained in full, LLaVA-1.5's recipe, trains beside the adapters, as LLaVA's
train.py sets it after wrapping). Quantizing the frozen base needs bitsandbytes and CUDA
(freezelab.quantize).

The wrapped model's base model names a base parameter as the index does, except that an adapted Linear's
weight and bias move under its `base_layer`; adapter tensors carry PEFT's names, which the adapted index
(freezelab.adapter_index) uses too, so `tensors` lines up the model's parameters with that index.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from freezelab.adapters import Adapters
from freezelab.errors import FreezelabError
from freezelab.index import ModelIndex
from freezelab.peft_targets import lora_kwargs, peft_name

if TYPE_CHECKING:
    import torch


class PeftMissingError(FreezelabError):
    """PEFT is not installed."""


def require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise PeftMissingError("adapters need the peft package (pip install 'peft>=0.21,<0.22')")


def lora_config(index: ModelIndex, adapters: Adapters, custom_modules: dict[type, type] | None = None) -> Any:
    """PEFT's LoraConfig for these adapters; `custom_modules`: LoRA layers for base layer types PEFT does
    not know (PEFT's `_register_custom_module`)."""
    require_peft()
    from peft import LoraConfig

    config = LoraConfig(**lora_kwargs(index, adapters))
    if custom_modules:
        config._register_custom_module(custom_modules)
    return config


def wrap(model: torch.nn.Module, index: ModelIndex, adapters: Adapters, mask: list[bool],
         custom_modules: dict[type, type] | None = None) -> Any:
    """`get_peft_model(model, config)`, then the plan's `mask` on the base parameters again. Returns the
    PeftModel (its `get_base_model()` is `model`, adapted in place)."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():  # PEFT 0.21 reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora_config(index, adapters, custom_modules))
    named = dict(peft_model.get_base_model().named_parameters())
    adapted = frozenset(a.path for a in adapters.layers)
    for p, on in zip(index.params, mask):
        named[peft_name(p.name, adapted)].requires_grad_(on)
    return peft_model


def tensors(model: torch.nn.Module, adapted_index: ModelIndex, adapters: Adapters) -> list[torch.Tensor]:
    """The parameters of the adapted base model in the order of the adapted index."""
    named = dict(model.named_parameters())
    paths = frozenset(a.path for a in adapters.layers)
    return [named[peft_name(p.name, paths)] for p in adapted_index.params]


def merged_output_check(peft_model: Any, inputs: dict[str, Any]) -> tuple[float, float]:
    """(largest |adapted - merged| over the logits, largest |adapted| logit): the adapted model's output,
    then PEFT's `merge_and_unload()` folds every adapter into its base weight and the same input runs
    again. Evaluation mode (no dropout), no gradients; the model is merged afterwards."""
    import torch

    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**inputs, use_cache=False).logits.float()
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(**inputs, use_cache=False).logits.float()
    return float((adapted - merged).abs().max()), float(adapted.abs().max())
