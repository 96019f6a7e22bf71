"""The index of an adapted model: the base index plus the tensors PEFT adds to each adapted Linear.

Counts, the module tree and the sanity step's checks read this index, so every total is base plus
adapters exactly as `get_peft_model(...).get_nb_trainable_parameters()` counts them, and the tree shows
each adapter as children of the Linear it wraps (`lora_A`, `lora_B`, DoRA's `lora_magnitude_vector`,
with PEFT's parameter names). The base tensors keep their index names and positions, so a plan's mask
extends by one True per adapter tensor. Adapter tensors are fp32: PEFT's `get_peft_model` upcasts
16-bit adapter weights (`autocast_adapter_dtype=True`, its default).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

from freezelab.adapters import AdaptedLayer, Adapters, AdapterTensor
from freezelab.components import Part, ancestors
from freezelab.index import ModelIndex, ModuleInfo, ParamInfo
from freezelab.index_memo import per_index

ADAPTER_DTYPE = "float32"
ADAPTED_TYPE = "lora.Linear"          # PEFT's repr of a Linear with a LoRA adapter
TENSOR_TYPES = {"A": "Linear", "B": "Linear", "magnitude": "DoraLinearLayer"}
MEMO_SIZE = 8                         # adapted indexes kept per base index


def _module_path(tensor: AdapterTensor) -> str:
    """`P.lora_A.default.weight` -> `P.lora_A` (the adapter module as the tree shows it)."""
    return tensor.name.rsplit(".", 2)[0]


class _Memo:
    def __init__(self) -> None:
        self.items: OrderedDict[Adapters, ModelIndex] = OrderedDict()
        self.lock = threading.Lock()


@per_index
def _memo(index: ModelIndex) -> _Memo:
    return _Memo()


def adapted_index(index: ModelIndex, adapters: Adapters) -> ModelIndex:
    """`index` with the adapter tensors of `adapters` added (the index itself when there are none)."""
    if not adapters.layers:
        return index
    memo = _memo(index)
    with memo.lock:
        found = memo.items.get(adapters)
        if found is not None:
            memo.items.move_to_end(adapters)
            return found
    built = _build(index, adapters)
    with memo.lock:
        memo.items[adapters] = built
        while len(memo.items) > MEMO_SIZE:
            memo.items.popitem(last=False)
    return built


def _build(index: ModelIndex, adapters: Adapters) -> ModelIndex:
    params = list(index.params)
    added: dict[str, list[int]] = {}            # module path -> adapter tensors in its subtree
    children: dict[str, list[ModuleInfo]] = {}  # adapted Linear -> its adapter modules
    dead = dict(index.dead)
    for layer, tensor in adapters.tensors():
        base = index.params[layer.linear.weight]
        i = len(params)
        params.append(ParamInfo(tensor.name, tensor.shape, tensor.numel, ADAPTER_DTYPE, base.component,
                                Part.ADAPTER.value, base.layer))
        if base.name in dead:
            dead[tensor.name] = dead[base.name]
        module = _module_path(tensor)
        linear = index.module_by_path[layer.path]
        children.setdefault(layer.path, []).append(ModuleInfo(
            module, TENSOR_TYPES[tensor.role], linear.depth + 1, (), (i,), (i,), linear.component, None))
        for path in [*ancestors(layer.path), ""]:
            added.setdefault(path, []).append(i)
    modules = []
    for m in index.modules:
        extra = added.get(m.path)
        if extra is None:
            modules.append(m)
            continue
        kids = children.get(m.path, [])
        modules.append(replace(m, type=ADAPTED_TYPE if kids else m.type, params=m.params + tuple(extra),
                               children=m.children + tuple(k.path for k in kids)))
        modules.extend(kids)
    return replace(index, params=params, modules=modules, dead=dead)


def adapter_of(index: ModelIndex, layer: AdaptedLayer) -> list[int]:
    """Indices (in an adapted index) of one adapted layer's tensors."""
    prefix = layer.path + "."
    return [i for i, p in enumerate(index.params) if p.part == Part.ADAPTER and p.name.startswith(prefix)]
