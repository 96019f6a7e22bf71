"""A quantized base in the simulation: bitsandbytes' kernels need CUDA and cannot run on fake tensors, so
each quantized Linear is replaced by a module that holds what a bitsandbytes weight stores and allocates
what its matmuls allocate (freezelab.memory.quantized: the same facts as the analytic estimate), and PEFT
wraps it with a LoRA layer whose forward is PEFT 0.21's for bitsandbytes layers (lora/bnb.py
`Linear4bit.forward` / `Linear8bitLt.forward`: the base result cloned (4-bit only), the LoRA output cast
to the result's dtype before it is added). PEFT reaches the dequantized weight (DoRA's norm) through the
module's `dequantize()`, as it does for other quantized layers. This is a model of the storage and the
transients, not bitsandbytes itself; the estimate says so.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from freezelab.adapters import Adapters, linears
from freezelab.index import ModelIndex
from freezelab.lora import QuantBits, Quantization
from freezelab.memory.quantized import storage_tensors

_DTYPES = {1: torch.uint8, 4: torch.float32}


class _DequantMatmul(torch.autograd.Function):
    """x @ W.T with W dequantized into a transient, in forward and (for the input's gradient) in backward;
    nothing saved but the module's packed weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: FakeQuantLinear, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.module = module
        ctx.has_bias = bias is not None
        return torch.nn.functional.linear(x, module.dequantize(), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grad_x = grad @ ctx.module.dequantize().to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias


class FakeQuantLinear(torch.nn.Module):
    """The memory of a bitsandbytes Linear4bit / Linear8bitLt: packed weight and quantization state."""

    def __init__(self, base: torch.nn.Linear, quant: Quantization) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dtype = base.weight.dtype
        self.quant = quant
        numel = self.in_features * self.out_features
        stored = storage_tensors(numel, self.out_features, quant)
        (n, e), state = stored[0], stored[1:]
        shape = (self.out_features, self.in_features) if quant.bits == QuantBits.INT8 else (n, 1)
        dtype = torch.int8 if quant.bits == QuantBits.INT8 else torch.uint8
        self.weight = torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=base.weight.device), requires_grad=False)
        for k, (count, elem) in enumerate(state):
            self.register_buffer(f"quant_state_{k}", torch.empty(count, dtype=_DTYPES[elem],
                                                                 device=base.weight.device), persistent=False)
        self.bias = base.bias
        # PEFT reads W_q (unregistered: not a second parameter) to place the adapter and to call dequantize()
        object.__setattr__(self, "W_q", self.weight)

    def dequantize(self) -> torch.Tensor:
        return torch.empty(self.out_features, self.in_features, dtype=self.dtype, device=self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x.dtype
        return _DequantMatmul.apply(x.to(self.dtype), self, self.bias).to(inp)


class FakeQuantLoraLinear(LoraLinear):
    """PEFT's LoRA layer around a quantized base, with the forward of PEFT's bitsandbytes LoRA layers."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.get_base_layer().quant.bits == QuantBits.NF4:
            result = result.clone()  # "for 4bit, we need to defensively clone here"
        for name in self.active_adapters:
            if name not in self.lora_A.keys():
                continue
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            convert = not torch.is_autocast_enabled()
            expected = result.dtype
            xa = self._cast_input_dtype(x, lora_A.weight.dtype) if convert else x
            if name not in self.lora_variant:
                output = lora_B(lora_A(self.lora_dropout[name](xa))) * self.scaling[name]
                result = result + (output.to(expected) if convert else output)
            else:
                result = self.lora_variant[name].forward(self, active_adapter=name, x=xa, result=result)
                result = result.to(expected) if convert else result
        return result


def quantize_fake(model: torch.nn.Module, index: ModelIndex, adapters: Adapters) -> None:
    """Replace the plan's quantized Linear layers of `model` by their modelled bitsandbytes modules."""
    chosen = set(adapters.quantized)
    for lin in linears(index):
        if lin.weight in chosen:
            model.set_submodule(lin.path, FakeQuantLinear(model.get_submodule(lin.path), adapters.quant))


CUSTOM_MODULES = {FakeQuantLinear: FakeQuantLoraLinear}
