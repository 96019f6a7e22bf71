"""Storing a real model's frozen base in 4 or 8 bits for the sanity step, with bitsandbytes on CUDA.

The layers are the plan's quantized weights (freezelab.adapters: the language model's frozen Linear
layers, not the head). Each becomes the bitsandbytes module transformers' `replace_with_bnb_linear` builds
for a BitsAndBytesConfig (`Linear4bit(in, out, bias, compute_dtype, compress_statistics=double_quant,
quant_type)` or `Linear8bitLt(in, out, bias, has_fp16_weights=False, threshold=6.0)`), holding the
layer's own weights as `Params4bit` / `Int8Params`, which quantize when moved to the CUDA device: what
`from_pretrained(..., quantization_config=...)` does while loading, here for random or loaded weights
alike. The compute dtype is the weights' dtype.

bitsandbytes' kernels need CUDA (they do not run on the CPU or on fake tensors), so a plan with a
quantized base is refused elsewhere before anything is built (`check_quantization`).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from freezelab.adapters import Adapters, linears
from freezelab.errors import FreezelabError
from freezelab.index import ModelIndex
from freezelab.lora import QuantBits

if TYPE_CHECKING:
    import torch

LLM_INT8_THRESHOLD = 6.0  # BitsAndBytesConfig's default llm_int8_threshold


class QuantizationError(FreezelabError):
    """A quantized base cannot be built here."""


def check_quantization(adapters: Adapters, device: str) -> None:
    """Refuse, before anything is built, a quantized base without CUDA or without bitsandbytes."""
    if not adapters.quant.on:
        return
    what = f"a quantized base ({adapters.quant.describe()})"
    if not device.startswith("cuda"):
        raise QuantizationError(f"{what} runs on CUDA only (bitsandbytes' kernels); use --device cuda, or "
                                "--quant none to step the same adapters on a 16-bit base")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(f"{what} needs the bitsandbytes package (pip install bitsandbytes); or use "
                                "--quant none")


def quantize(model: torch.nn.Module, index: ModelIndex, adapters: Adapters, device: str) -> None:
    """Replace each quantized Linear of `model` (on the CPU) by its bitsandbytes module on `device`."""
    import bitsandbytes as bnb
    import torch

    q = adapters.quant
    chosen = set(adapters.quantized)
    for lin in linears(index):
        if lin.weight not in chosen:
            continue
        old = model.get_submodule(lin.path)
        weight = old.weight.data.to("cpu")
        if q.bits == QuantBits.NF4:
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, old.bias is not None, weight.dtype,
                                    compress_statistics=q.double_quant, quant_type=q.quant_type.value, device="cpu")
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=q.double_quant,
                                           quant_type=q.quant_type.value)
        else:
            new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, old.bias is not None,
                                      has_fp16_weights=False, threshold=LLM_INT8_THRESHOLD, device="cpu")
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data.to("cpu"), requires_grad=old.bias.requires_grad)
        model.set_submodule(lin.path, new.to(device))
