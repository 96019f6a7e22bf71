"""What an adapted or quantized Linear keeps for backward: its ops on the activations tape.

Read from PEFT 0.21's lora/layer.py `Linear.forward`, lora/variants.py `DoraLinearVariant.forward` and
lora/dora.py `DoraLinearLayer.forward`, with the adapter weights in fp32 (get_peft_model's default
`autocast_adapter_dtype=True` upcasts 16-bit adapters):

* LoRA: `result = base_layer(x)`; `x` cast to the adapter dtype (a copy when the model is 16-bit);
  `lora_B(lora_A(dropout(x))) * scaling` (A saves its input even when the base Linear beside it keeps
  nothing, B saves A's output, dropout keeps a mask); the sum with the 16-bit result is fp32 and is cast
  back (`result.to(torch_result_dtype)`). The output always requires grad: gradients reach the adapter.
* DoRA adds, per layer: `lora_B(lora_A(eye(in_features)))` for the weight norm (an in x in identity and
  an in x out product, transients), the base weight cast to the input dtype and `W + s * BA` (out x in,
  transients), the norm and the magnitude scale (saved), and the products with the base result and the
  LoRA result (both saved). With dropout the base result is recomputed from the dropped input with the
  cast weight, which autograd then keeps.
* A quantized base Linear (bitsandbytes, modelled: its kernels cannot run here) keeps nothing but its
  packed weight; forward and backward dequantize the weight into a 16-bit transient
  (freezelab.memory.quantized).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from freezelab.adapters import AdaptedLayer, Adapters
from freezelab.compute import cost as costs
from freezelab.lora import QuantBits
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.quantized import dequant_transient

if TYPE_CHECKING:
    from freezelab.memory.activations import Tape

ADAPTER_ELEM = 4   # fp32 adapter weights (PEFT's autocast_adapter_dtype)
MASK_ELEM = 1      # dropout's boolean mask


@dataclass(frozen=True)
class AdapterSpec:
    """The adapters and quantized weights of one estimate, looked up by base weight index."""

    layers: dict[int, AdaptedLayer] = field(default_factory=dict)
    quantized: frozenset[int] = frozenset()
    dora: bool = False
    dropout: float = 0.0
    adapters: Adapters | None = None
    shapes: dict[int, tuple[tuple[int, ...], ...]] = field(default_factory=dict)  # weight -> its adapter shapes
    _keys: dict[int, tuple[Any, ...]] = field(default_factory=dict, compare=False)  # memo of key(), by dict id

    @classmethod
    def of(cls, adapters: Adapters | None) -> AdapterSpec:
        return _spec(adapters) if adapters is not None else cls()

    def key(self, params: dict[str, int]) -> tuple[Any, ...]:
        """What a layer's memory depends on besides its mask (each weight's rank, quantized or not), by
        relative name, for the cache of identical layers."""
        if not self.layers and not self.quantized:
            return ()
        found = self._keys.get(id(params))
        if found is None or found[0] is not params:  # held with its dict: an id is reused only after it dies
            found = self._keys[id(params)] = (params, tuple(
                (name, self.layers[i].r if i in self.layers else 0, i in self.quantized)
                for name, i in sorted(params.items()) if i in self.layers or i in self.quantized))
        return found[1]

    def token(self) -> Adapters | None:
        """What the whole spec depends on (its adapters and their settings: ranks, DoRA, dropout, the
        quantized base), for memos beyond one estimate; None without adapters."""
        return self.adapters


@lru_cache(maxsize=16)
def _spec(adapters: Adapters) -> AdapterSpec:
    """One spec per plan's adapters (an estimate and its memory curve share it)."""
    shapes = {a.linear.weight: tuple(t.shape for t in a.tensors(adapters.dora)) for a in adapters.layers}
    return AdapterSpec(adapters.by_weight(), frozenset(adapters.quantized), adapters.dora, adapters.settings.dropout,
                       adapters, shapes)


def adapter_weight(role: str, weight: int) -> tuple[str, int]:
    """The tape's handle of an adapter tensor (the tape looks weights up by handle)."""
    return (role, weight)


def base_linear(t: Tape, x: str, out: str, out_features: int, weight: int, bias: int | None, spec: AdapterSpec) -> str:
    """The frozen base Linear under an adapter, or a quantized one: what nn.Linear keeps, plus the
    dequantization transients of a quantized weight."""
    y = t.plain_linear(x, out, out_features, weight, bias)
    if weight in spec.quantized:
        deq = dequant_transient(t.param_numel(weight), t.num.param)
        t._fwd(t.nbytes(y) + deq)
        if t.grad(x):
            t._bwd(t._grad_bytes(y) + t.t[x].nbytes + deq)
    return y


def _cast(t: Tape, x: str, elem: int, name: str) -> str:
    """`x.to(dtype)`: the same tensor when it already has that dtype, else a copy (saves nothing)."""
    src = t.t[x]
    if src.elem == elem:
        return x
    return t.new(name, src.numel, elem, src.grad, src.width)


def _dropout(t: Tape, x: str, out: str, spec: AdapterSpec) -> str:
    """nn.Dropout in training: a new tensor; the mask is kept when the input needs a gradient."""
    if spec.dropout <= 0:
        return x
    src = t.t[x]
    y = t.new(f"{out}.drop", src.numel, src.elem, src.grad, src.width)
    if src.grad:
        t._save(t._new(f"{out}.mask", src.numel, MASK_ELEM, False, src.width))
    return y


def _lora_ab(t: Tape, d: str, out: str, out_features: int, layer: AdaptedLayer) -> str:
    """lora_B(lora_A(d)), in the adapter dtype (16-bit under autocast)."""
    elem = 2 if t.num.autocast else ADAPTER_ELEM
    w = layer.linear.weight
    a = t.plain_linear(d, f"{out}.A", layer.r, adapter_weight("A", w), None, elem=elem)
    return t.plain_linear(a, f"{out}.B", out_features, adapter_weight("B", w), None, elem=elem)


def _scaled(t: Tape, x: str, name: str) -> str:
    """`x * scaling`, a Python number: a new tensor, nothing saved."""
    src = t.t[x]
    return t.new(name, src.numel, src.elem, src.grad, src.width)


def lora_linear(t: Tape, x: str, out: str, out_features: int, weight: int, bias: int | None,
                spec: AdapterSpec) -> str:
    """PEFT's lora.Linear, or its bitsandbytes LoRA layer around a quantized base (lora/bnb.py: the base
    result cloned for 4-bit, the LoRA output cast to the result's dtype before it is added)."""
    layer = spec.layers[weight]
    y = base_linear(t, x, f"{out}.base", out_features, weight, bias, spec)
    quantized = weight in spec.quantized
    if quantized and spec.adapters is not None and spec.adapters.quant.bits == QuantBits.NF4:
        y = t.new(f"{out}.clone", t.t[y].numel, t.t[y].elem, t.grad(y), out_features)
    xa = x if t.num.autocast else _cast(t, x, ADAPTER_ELEM, f"{out}.x32")
    if spec.dora:
        total = _dora(t, xa, y, out, out_features, weight, bias, layer, spec)
    else:
        d = _dropout(t, xa, out, spec)
        lora = _scaled(t, _lora_ab(t, d, out, out_features, layer), f"{out}.scaled")
        if quantized:
            lora = _cast(t, lora, t.t[y].elem, f"{out}.lora16")
        total = t.add(y, lora, f"{out}.sum")
    return _cast(t, total, t.t[y].elem, out)


def _dora_transients(t: Tape, layer: AdaptedLayer, out_features: int, x_elem: int) -> int:
    """DoRA's weight norm, computed in every forward: eye(in), A(eye), B(A(eye)) and the base weight in
    the input dtype stay alive through the forward of the layer; W + s*BA and s*BA at the norm."""
    n_in, r = layer.linear.in_features, layer.r
    eye = rounded(n_in * n_in * ADAPTER_ELEM)
    lora_weight = rounded(n_in * r * ADAPTER_ELEM) + rounded(n_in * out_features * ADAPTER_ELEM)
    w_cast = rounded(n_in * out_features * x_elem) if x_elem != t.num.param else 0
    return eye + lora_weight + w_cast + 2 * rounded(n_in * out_features * max(x_elem, ADAPTER_ELEM))


def _dora(t: Tape, xa: str, y: str, out: str, out_features: int, weight: int, bias: int | None,
          layer: AdaptedLayer, spec: AdapterSpec) -> str:
    held = _dora_transients(t, layer, out_features, t.t[xa].elem)
    rows, n_in = t.t[y].rows, layer.linear.in_features
    # the weight norm's lora_B(lora_A(eye(in))): forward only (detached, so no backward)
    t._charge(costs.matmul(n_in, n_in, layer.r, input_grad=False, weight_grad=False)
              + costs.matmul(n_in, layer.r, out_features, input_grad=False, weight_grad=False))
    norm = t._new(f"{out}.norm", out_features, ADAPTER_ELEM, False, out_features)
    mag = t._new(f"{out}.mag", out_features, ADAPTER_ELEM, True, out_features)
    t._save(norm)  # magnitude / weight_norm saves the divisor
    if spec.dropout > 0:  # base result recomputed from the dropped input with the cast weight
        d = _dropout(t, xa, out, spec)
        base = t.new(f"{out}.base2", rows * out_features, t.t[d].elem, t.t[d].grad, out_features)
        t._charge(costs.matmul(rows, n_in, out_features, input_grad=t.grad(d), weight_grad=False))
        if t.grad(d) and t.t[xa].elem != t.num.param:
            t._save(t._new(f"{out}.w_cast", t.param_numel(weight), t.t[xa].elem, False))
    else:
        d = xa
        base = y if bias is None else t.new(f"{out}.nobias", t.t[y].numel, t.t[y].elem, t.grad(y), out_features)
    lora = _lora_ab(t, d, out, out_features, layer)
    m1 = t._new(f"{out}.m1", out_features, ADAPTER_ELEM, True, out_features)
    p1 = t.mul(m1, base, f"{out}.p1")
    p2 = t.mul(mag, lora, f"{out}.p2")
    p3 = _scaled(t, p2, f"{out}.p3")
    rd = t.add(p1, p3, f"{out}.rd")
    # at `p2 * scaling` the weight-norm transients and all of the layer's own tensors are alive at once:
    # on top of what the stage keeps, the ones not saved (also in a checkpoint's recompute)
    alive = {y, xa, base, f"{out}.A", lora, p1, p2, p3}
    transient = held + sum(t.nbytes(n) for n in alive if n not in t.saved)
    t.dora_extra = max(t.dora_extra, transient)
    t.dora_fwd = max(t.dora_fwd, t.kept + transient)  # without checkpointing, with what the layer saved so far
    t._weight_norm(held, transient)
    return t.add(y, rd, f"{out}.sum")
