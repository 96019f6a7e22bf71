"""What adapters and a quantized base add to the resident memory of a training step: the adapter tensors
(fp32, as get_peft_model leaves them), their gradients, optimizer state and optimizer-step temporaries,
and the quantized weights in place of the 16-bit ones (freezelab.memory.quantized).

An adapter's gradient is made by the backward of the stage its Linear belongs to; adapters behind the
vision feature layer never get one, and so never get optimizer state either (state is created at the
first step() for tensors with a gradient). Torch's foreach AdamW groups tensors by dtype and keeps one
group's `exp_avg_sq_sqrt` alive while it computes the next one's, so with fp32 adapters beside 16-bit
trainable weights the step's temporary is the sum of both groups (freezelab.memory.optimizer_state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from freezelab.index import ModelIndex
from freezelab.memory import optimizer_state
from freezelab.memory.adapter_ops import ADAPTER_ELEM, AdapterSpec
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.quantized import storage_bytes
from freezelab.memory.stages import Stage
from freezelab.units import gib


@dataclass
class AdapterResident:
    weights: int = 0                 # adapter tensors, plus quantized minus 16-bit storage of quantized weights
    gradients: int = 0
    state: int = 0
    step_temp: int = 0
    grad_of: dict[str, int] = field(default_factory=dict)   # stage name -> adapter gradient bytes it makes
    first_of: dict[str, int] = field(default_factory=dict)  # stage name -> its largest adapter gradient
    params_with_grad: int = 0
    quantized_bytes: int = 0         # what the quantized weights store
    quantized_dense: int = 0         # what they would take in the parameter dtype
    paged: int = 0                   # a paged optimizer's adapter state in unified memory


def _tensors(spec: AdapterSpec, weights: set[int]) -> list[optimizer_state.Tensor]:
    """The adapter tensors of the adapted layers whose base weights are `weights`."""
    return [optimizer_state.Tensor(shape, math.prod(shape)) for w in weights for shape in spec.shapes[w]]


def _bytes(tensors: list[optimizer_state.Tensor]) -> int:
    return sum(rounded(t.numel * ADAPTER_ELEM) for t in tensors)


def _quantized(index: ModelIndex, spec: AdapterSpec, elem: int) -> tuple[int, int]:
    """(stored bytes of the quantized weights, what they would take in the parameter dtype)."""
    adapters = spec.adapters
    if adapters is None or not spec.quantized:
        return 0, 0
    stored = full = 0
    for i in spec.quantized:
        p = index.params[i]
        stored += storage_bytes(p.numel, p.shape[0], adapters.quant)
        full += rounded(p.numel * elem)
    return stored, full


def resident(index: ModelIndex, spec: AdapterSpec, stages: list[Stage], optimizer: str,
             elem: int) -> AdapterResident:
    """The adapters' and the quantized base's share of the resident memory (elem: the parameter dtype's size)."""
    out = AdapterResident()
    stored, full = _quantized(index, spec, elem)
    out.quantized_bytes, out.quantized_dense = stored, full
    if spec.adapters is None or not spec.layers:
        out.weights = stored - full
        return out
    out.weights = _bytes(_tensors(spec, set(spec.layers))) + stored - full
    got: set[int] = set()
    for s in stages:
        if not s.backward:
            continue
        mine = {i for i in s.grad_params if i in spec.layers and i not in got}
        if mine:
            tensors = _tensors(spec, mine)
            out.grad_of[s.name] = out.grad_of.get(s.name, 0) + _bytes(tensors)
            out.first_of[s.name] = max(rounded(t.numel * ADAPTER_ELEM) for t in tensors)
            got |= mine
    live = _tensors(spec, got)
    out.gradients = _bytes(live)
    out.params_with_grad = sum(t.numel for t in live)
    out.state = optimizer_state.state_bytes(optimizer, live, ADAPTER_ELEM)
    out.step_temp = optimizer_state.step_temp_bytes(optimizer, live, ADAPTER_ELEM)
    out.paged = optimizer_state.paged_bytes(optimizer, live)
    return out


def combined_step_temp(optimizer: str, base: int, adapters: int) -> int:
    """The optimizer step's temporaries with two dtype groups: AdamW's foreach keeps the previous group's
    temporary while making the next (their sum); Adafactor's single-tensor loop one tensor's (the larger)."""
    if optimizer == "adafactor":
        return max(base, adapters)
    return base + adapters


def adapter_details(spec: AdapterSpec, extra: AdapterResident) -> dict[str, Any]:
    adapters = spec.adapters
    assert adapters is not None
    return {"layers": len(adapters.layers), "params": adapters.params, "params_with_gradient": extra.params_with_grad,
            "weights_bytes": _bytes(_tensors(spec, set(spec.layers))) if spec.layers else 0,
            "gradients_bytes": extra.gradients, "optimizer_state_bytes": extra.state,
            "quantized_weights": len(spec.quantized), "quantized_bytes": extra.quantized_bytes,
            "quantized_dense_bytes": extra.quantized_dense,
            "quantization": adapters.quant.to_dict()}


def adapter_notes(spec: AdapterSpec, extra: AdapterResident) -> list[str]:
    """Plain sentences: what the adapters and the quantized base cost, and why."""
    adapters = spec.adapters
    assert adapters is not None
    out = []
    if adapters.layers:
        kind = "DoRA" if adapters.dora else "LoRA"
        weights = _bytes(_tensors(spec, set(spec.layers)))
        out.append(f"{kind} on {len(adapters.layers)} Linear layers: {adapters.params:,} adapter parameters, kept in "
                   f"fp32 (PEFT upcasts 16-bit adapters): {gib(weights)} of weights, {gib(extra.gradients)} of "
                   f"gradients and {gib(extra.state)} of optimizer state.")
        out.append("Each adapted layer keeps its input for A's gradient (a copy in the adapter's fp32) and A's output "
                   "for B's, even where the frozen Linear beside it keeps nothing, and every layer after the first "
                   "adapter passes gradients back: adapters bring back activations that freezing removed.")
    if adapters.dora and adapters.layers:
        out.append("DoRA recomputes every layer's weight norm in each forward (an identity of in x in and W + s*BA in "
                   "fp32, transients) and keeps the base and LoRA outputs for the magnitude's gradient.")
    if spec.quantized:
        out.append(f"{len(spec.quantized)} frozen Linear weights of the LLM are stored as {adapters.quant.describe()}: "
                   f"{gib(extra.quantized_bytes)} with their block constants; each matmul dequantizes its weight "
                   "into a transient of the layer's dtype. Modelled from bitsandbytes 0.49 (its kernels need CUDA): "
                   "no GPU measurement of a quantized base exists here.")
    return out
