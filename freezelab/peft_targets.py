"""A plan's adapters as PEFT 0.21's `LoraConfig` arguments, torch-free (exports write them as text, the
sanity step and the simulation build the config from them).

PEFT reads a string `target_modules` as a regular expression that must match a module's whole name
(`re.fullmatch`, peft/utils/other.py `match_target_against_key`); `rank_pattern` / `alpha_pattern` keys
are regular expressions matched as `re.match(rf"(.*\\.)?({key})$", name)` (`get_pattern_key`). So the
adapted layers are written as one anchored alternation of exact module paths, compressed per layer stack:
`model\\.language_model\\.layers\\.\\d+\\.(?:self_attn\\.q_proj|...)` when every layer of the stack is
adapted alike, an explicit list of layer numbers otherwise. Rules with their own r / alpha become
rank_pattern / alpha_pattern entries built the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from freezelab.adapters import Adapters
from freezelab.components import ancestors
from freezelab.index import ModelIndex


def _layer_of(index: ModelIndex) -> dict[str, tuple[str, int, int]]:
    """Layer module path -> (its stack's path, its number, layers in the stack)."""
    out = {}
    for paths in index.layers.values():
        for i, path in enumerate(paths):
            out[path] = (path.rpartition(".")[0], i, len(paths))
    return out


def module_pattern(index: ModelIndex, paths: Sequence[str]) -> str:
    """A regular expression that `re.fullmatch`es exactly the module paths `paths` of `index`."""
    layer_of = _layer_of(index)
    groups: dict[tuple[str, tuple[int, ...], int], list[str]] = {}
    by_stack: dict[tuple[str, str], set[int]] = {}
    plain: list[str] = []
    sizes: dict[str, int] = {}
    for path in paths:
        layer = next((a for a in ancestors(path) if a in layer_of and a != path), None)
        if layer is None:
            plain.append(re.escape(path))
            continue
        stack, number, size = layer_of[layer]
        sizes[stack] = size
        by_stack.setdefault((stack, path[len(layer) + 1:]), set()).add(number)
    for (stack, suffix), numbers in by_stack.items():
        groups.setdefault((stack, tuple(sorted(numbers)), sizes[stack]), []).append(suffix)
    alternatives = []
    for (stack, numbers, size), suffixes in groups.items():
        which = r"\d+" if len(numbers) == size else "(?:" + "|".join(map(str, numbers)) + ")"
        inner = "|".join(re.escape(s) for s in suffixes)
        alternatives.append(f"{re.escape(stack)}\\.{which}\\.(?:{inner})" if len(suffixes) > 1
                            else f"{re.escape(stack)}\\.{which}\\.{inner}")
    alternatives += plain
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def lora_kwargs(index: ModelIndex, adapters: Adapters) -> dict[str, Any]:
    """The keyword arguments of `peft.LoraConfig` that give exactly these adapters (bias stays "none":
    the plan's train rules set the biases afterwards)."""
    s = adapters.settings
    kwargs: dict[str, Any] = {
        "r": s.r, "lora_alpha": s.alpha, "lora_dropout": s.dropout, "use_dora": s.dora, "bias": "none",
        "target_modules": module_pattern(index, [a.path for a in adapters.layers]),
    }
    ranks: dict[int, list[str]] = {}
    alphas: dict[float, list[str]] = {}
    for a in adapters.layers:
        if a.r != s.r:
            ranks.setdefault(a.r, []).append(a.path)
        if a.alpha != s.alpha:
            alphas.setdefault(a.alpha, []).append(a.path)
    if ranks:
        kwargs["rank_pattern"] = {module_pattern(index, paths): r for r, paths in ranks.items()}
    if alphas:
        kwargs["alpha_pattern"] = {module_pattern(index, paths): alpha for alpha, paths in alphas.items()}
    return kwargs


def peft_name(name: str, adapted: frozenset[str] | set[str]) -> str:
    """A base parameter's name inside the PEFT-wrapped model's base model: the weight and bias of an
    adapted Linear move under its `base_layer`."""
    module, _, leaf = name.rpartition(".")
    return f"{module}.base_layer.{leaf}" if module in adapted else name


_ADAPTER_PART = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector|lora_dropout)\.[^.]+(?=\.)")


def base_name(name: str) -> str:
    """The base parameter an adapted model's parameter belongs to: `P.base_layer.weight` and
    `P.lora_A.default.weight` are both `P.weight` (quantized layers' state tensors too)."""
    plain = name.replace(".base_layer.", ".")
    return _ADAPTER_PART.sub("", plain) if _ADAPTER_PART.search(plain) else plain


def is_adapter_name(name: str) -> bool:
    """Whether a parameter of an adapted model is one of PEFT's adapter tensors."""
    return _ADAPTER_PART.search(name) is not None and ".lora_dropout." not in name
