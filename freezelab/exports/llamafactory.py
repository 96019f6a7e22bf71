"""Export target: LLaMA-Factory YAML keys (finetuning_type full / freeze).

The selection logic below mirrors LLaMA-Factory line by line, so that the
YAML is emitted as exact only when LLaMA-Factory itself would train exactly
the plan's parameters:

* src/llamafactory/model/adapter.py: `_setup_full_tuning`, `_setup_freeze_tuning`
* src/llamafactory/model/model_utils/visual.py: `get_forbidden_modules`, `COMPOSITE_MODELS`
* src/llamafactory/hparams/finetuning_args.py: defaults (`FreezeArguments`, `FinetuningArguments`)

at hiyouga/LLaMA-Factory commit ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30.
What that code does, and what the mirror keeps:

* Every match is a plain substring test on the parameter name (`x in name`).
* freeze_vision_tower / freeze_multi_modal_projector / freeze_language_model
  ("forbidden modules") act only on model types registered as composite
  models: llava, llava_next, llava_next_video, gemma3, internvl, paligemma
  (default keys), mistral3 (projector "model.multi_modal_projector"),
  qwen2_vl / qwen2_5_vl (projector "visual.merger", vision "visual.patch_embed",
  "visual.blocks") and qwen3_vl (the same, with "visual.pos_embed" and
  "visual.deepstack_merger_list" among the vision keys: the DeepStack mergers
  freeze with the vision tower, not with the projector). llava_onevision,
  vipllava, idefics3 and smolvlm are not registered, so these keys change
  nothing there.
* Freeze mode: freeze_trainable_layers > 0 trains the LAST n decoder layers,
  < 0 the FIRST -n (0: none), counted from text_config.num_hidden_layers,
  by matching ".{idx}.{module}" anywhere in a name, so a vision layer with
  the same index matches too unless the vision tower is forbidden.
  lm_head, embeddings and the final norm never train through it, only
  through freeze_extra_modules, whose entries must be a module name that
  owns a parameter outside the layers (name.split(".")[-2]) and then match
  as substrings ("norm" also hits every layer's input_layernorm).
  The projector joins freeze mode only through freeze_multi_modal_projector:
  false on a composite model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from freezelab.exports.base import (Difference, Export, ExportError, closest, comment_lines, counts_line, describe,
                                    printable)
from freezelab.exports.naming import MODEL_LEVEL_SINCE, Spelling, spelling_of_index
from freezelab.index import ModelIndex
from freezelab.plans import Plan

SOURCE = "hiyouga/LLaMA-Factory @ ff6d4d1"
TRANSFORMERS = ">=4.55.0,<=5.8.0,!=4.57.0,!=5.6.0"  # src/llamafactory/extras/misc.py check_version
# data/template.py and data/mm_plugin.py register templates and multimodal plugins for llava,
# llava_next and llava_next_video; none for these LLaVA-family types:
NO_MM_PLUGIN = {"llava_onevision": "LLaVA-OneVision"}


@dataclass(frozen=True)
class Composite:
    projector_keys: tuple[str, ...] = ("multi_modal_projector",)
    vision_model_keys: tuple[str, ...] = ("vision_tower",)
    language_model_keys: tuple[str, ...] = ("language_model", "lm_head")


_QWEN_LM = ("language_model", "lm_head")
# visual.py's _register_composite_model calls for the families freezelab checks (others are not registered).
COMPOSITE_MODELS: dict[str, Composite] = {
    **{t: Composite() for t in ("llava", "llava_next", "llava_next_video", "gemma3", "internvl", "paligemma")},
    "mistral3": Composite(projector_keys=("model.multi_modal_projector",)),
    "qwen2_vl": Composite(("visual.merger",), ("visual.patch_embed", "visual.blocks"), _QWEN_LM),
    "qwen2_5_vl": Composite(("visual.merger",), ("visual.patch_embed", "visual.blocks"), _QWEN_LM),
    "qwen3_vl": Composite(("visual.merger",), ("visual.pos_embed", "visual.patch_embed", "visual.blocks",
                                               "visual.deepstack_merger_list"), _QWEN_LM),
}


class Refused(Exception):
    """LLaMA-Factory would stop with a ValueError for this setting (e.g. an unknown module name)."""


@dataclass(frozen=True)
class Setting:
    finetuning_type: str = "full"                      # "full" | "freeze"
    freeze_vision_tower: bool = True                   # LLaMA-Factory's defaults
    freeze_multi_modal_projector: bool = True
    freeze_language_model: bool = False
    freeze_trainable_layers: int = 2
    freeze_trainable_modules: tuple[str, ...] = ("all",)
    freeze_extra_modules: tuple[str, ...] = ()

    def yaml_lines(self) -> list[str]:
        lines = [f"finetuning_type: {self.finetuning_type}"]
        if self.finetuning_type == "freeze":
            n = self.freeze_trainable_layers
            which = f"the last {n}" if n > 0 else f"the first {-n}" if n < 0 else "no"
            lines += [f"freeze_trainable_layers: {n}  # {which} decoder layer(s)",
                      f"freeze_trainable_modules: {','.join(self.freeze_trainable_modules)}"]
            if self.freeze_extra_modules:
                lines.append(f"freeze_extra_modules: {','.join(self.freeze_extra_modules)}")
        return lines + [f"freeze_vision_tower: {str(self.freeze_vision_tower).lower()}",
                        f"freeze_multi_modal_projector: {str(self.freeze_multi_modal_projector).lower()}",
                        f"freeze_language_model: {str(self.freeze_language_model).lower()}"]


# -- the mirror ------------------------------------------------------------------

def forbidden_modules(model_type: str, s: Setting) -> set[str]:
    """visual.py get_forbidden_modules."""
    keys = COMPOSITE_MODELS.get(model_type)
    out: set[str] = set()
    if keys is None:
        return out
    if s.freeze_vision_tower:
        out.update(keys.vision_model_keys)
    if s.freeze_multi_modal_projector:
        out.update(keys.projector_keys)
    if s.freeze_language_model:
        out.update(keys.language_model_keys)
    return out


class Names:
    """The model's parameter names (named_parameters order, tied tensors once) with a memo of
    `needle in name` per needle, so many candidate settings share the substring scans."""

    def __init__(self, index: ModelIndex) -> None:
        self.names = tuple(p.name for p in index.params)
        self._hits: dict[str, frozenset[int]] = {}

    def containing(self, needles: Iterable[str]) -> set[int]:
        """Indices of the names for which `any(n in name for n in needles)`."""
        out: set[int] = set()
        for needle in needles:
            if needle not in self._hits:
                self._hits[needle] = frozenset(i for i, name in enumerate(self.names) if needle in name)
            out |= self._hits[needle]
        return out


def _num_layers(config: dict[str, Any]) -> int | None:
    cfg = config["text_config"] if "text_config" in config else config  # composite models: the LLM's config
    return cfg.get("num_hidden_layers") or cfg.get("num_layers") or cfg.get("n_layer")


@lru_cache(maxsize=16)
def _module_names(names: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """_setup_freeze_tuning's hidden_modules (inside layers) and non_hidden_modules (outside)."""
    hidden, non_hidden = set(), set()
    for name in names:
        if ".0." in name:
            hidden.add(name.split(".0.")[-1].split(".")[0])
        elif ".1." in name:  # MoD starts from layer 1
            hidden.add(name.split(".1.")[-1].split(".")[0])
        if re.search(r"\.\d+\.", name) is None:
            non_hidden.add(name.split(".")[-2])
    return frozenset(hidden), frozenset(non_hidden)


def layer_ids(num_layers: int, n: int) -> range:
    """The sign rule of freeze_trainable_layers (use_llama_pro is never emitted)."""
    if n > 0:
        return range(max(0, num_layers - n), num_layers)
    return range(min(-n, num_layers))


def _freeze_targets(index: ModelIndex, s: Setting, names: tuple[str, ...]) -> list[str]:
    num_layers = _num_layers(index.config)
    if not num_layers:
        raise Refused("Current model does not support freeze tuning.")
    hidden, non_hidden = _module_names(names)
    targets = []
    for module in s.freeze_trainable_modules:
        if module != "all" and module not in hidden:
            raise Refused(f"Module {module} is not found")
        suffix = module if module != "all" else ""
        targets += [f".{idx}.{suffix}" for idx in layer_ids(num_layers, s.freeze_trainable_layers)]
    for module in s.freeze_extra_modules:
        if module not in non_hidden:
            raise Refused(f"Module {module} is not found")
        targets.append(module)
    if not s.freeze_multi_modal_projector and index.model_type in COMPOSITE_MODELS:
        targets += COMPOSITE_MODELS[index.model_type].projector_keys
    return targets


def trainable_set(index: ModelIndex, s: Setting, names: Names | None = None) -> set[int]:
    """Indices of the parameters LLaMA-Factory's init_adapter leaves trainable (named_parameters order,
    tied tensors once)."""
    names = names or Names(index)
    forbidden = names.containing(forbidden_modules(index.model_type, s))
    if s.finetuning_type == "full":
        return set(range(len(names.names))) - forbidden
    return names.containing(_freeze_targets(index, s, names.names)) - forbidden


def trainable(index: ModelIndex, s: Setting, names: Names | None = None) -> list[bool]:
    """trainable_set as a mask."""
    on = trainable_set(index, s, names)
    return [i in on for i in range(len(index.params))]


# -- finding the setting ------------------------------------------------------------

_FLAGS = ((True, True, False), (True, False, False), (True, False, True), (True, True, True),
          (False, False, False), (False, True, False), (False, False, True), (False, True, True))  # defaults first


def _layer_counts(index: ModelIndex, mask: Sequence[bool]) -> list[int]:
    """Every freeze_trainable_layers value from -L to L (L: the LLM's layers), the likeliest first:
    the top or bottom run that covers every LLM layer with a trained parameter, the top or bottom
    run of fully trained layers, 0. The rest of the range matters too: ".{idx}." also matches
    vision layers, so on an unregistered model a layer count can train part of the vision tower."""
    num_layers = _num_layers(index.config) or 0
    used: set[int] = set()
    partial: set[int] = set()
    for p, on in zip(index.params, mask):
        if p.component == "llm" and p.layer is not None:
            (used if on else partial).add(p.layer)
    likely = [0]
    if used:
        full = used - partial
        top = next((k for k in range(num_layers) if num_layers - 1 - k not in full), num_layers)
        bottom = next((k for k in range(num_layers) if k not in full), num_layers)
        likely = [n for n in (num_layers - min(used), -(max(used) + 1), top, -bottom) if n] + [0]
    return list(dict.fromkeys([*likely, *range(num_layers, -num_layers - 1, -1)]))


def _trained_segments(index: ModelIndex, mask: Sequence[bool]) -> dict[int, dict[str, None]]:
    """LLM layer -> the first name segments under it (self_attn, mlp, ...) that hold a trained parameter."""
    paths = index.layers["llm"]
    out: dict[int, dict[str, None]] = {}
    for p, on in zip(index.params, mask):
        if on and p.component == "llm" and p.layer is not None:
            out.setdefault(p.layer, {})[p.name[len(paths[p.layer]) + 1:].split(".")[0]] = None
    return out


def _module_choices(segments: dict[int, dict[str, None]], num_layers: int, n: int) -> list[tuple[str, ...]]:
    """'all', and the first segments under the chosen layers that hold a trained parameter."""
    segs: dict[str, None] = {}
    for i in layer_ids(num_layers, n):
        segs.update(segments.get(i, {}))
    return [("all",)] + ([tuple(segs)] if segs else [])


def _extra_choices(index: ModelIndex, mask: Sequence[bool]) -> list[tuple[str, ...]]:
    """Owners of trained parameters outside any layer: all of them, only those whose substring
    match stays inside the plan, all but the projector's, and none."""
    names = [p.name for p in index.params]
    outside = [p for p, on in zip(index.params, mask) if on and re.search(r"\.\d+\.", p.name) is None]
    every = tuple(dict.fromkeys(p.name.split(".")[-2] for p in outside))
    safe = tuple(m for m in every if all(on for n, on in zip(names, mask) if m in n))
    no_projector = tuple(dict.fromkeys(p.name.split(".")[-2] for p in outside if p.component != "projector"))
    return list(dict.fromkeys([every, safe, no_projector, ()]))


def candidates(index: ModelIndex, mask: Sequence[bool]) -> Iterator[Setting]:
    """Full-mode settings first (simpler), then freeze-mode ones built from the plan. The three
    multimodal switches vary only where LLaMA-Factory reads them (registered composite models)."""
    flags = _FLAGS if index.model_type in COMPOSITE_MODELS else _FLAGS[:1]
    for fvt, fmmp, flm in flags:
        yield Setting("full", fvt, fmmp, flm)
    extra_choices = _extra_choices(index, mask)
    segments = _trained_segments(index, mask)
    for n in _layer_counts(index, mask):
        for modules in _module_choices(segments, len(index.layers["llm"]), n):
            for extras in extra_choices:
                for fvt, fmmp, flm in flags:
                    yield Setting("freeze", fvt, fmmp, flm, n, modules, extras)


def _scored(index: ModelIndex, mask: Sequence[bool]) -> Iterator[tuple[Setting, set[int]]]:
    names = Names(index)
    for s in candidates(index, mask):
        try:
            yield s, trainable_set(index, s, names)
        except Refused:
            continue


def best(index: ModelIndex, mask: Sequence[bool]) -> tuple[Setting, Difference]:
    """The first exact setting, else the closest one, with how it differs from the plan."""
    setting, diff = closest(index, mask, _scored(index, mask))
    assert isinstance(setting, Setting)
    return setting, diff


def _usability(index: ModelIndex, note: str) -> str | None:
    """Why LLaMA-Factory cannot train this model on images at all, or None."""
    family = NO_MM_PLUGIN.get(index.model_type)
    if family is None:
        return None
    return (f"LLaMA-Factory has no chat template or multimodal plugin for {family} (none in data/template.py "
            f"or data/mm_plugin.py), so it cannot train this model on images; were it able to: {note}")


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool]) -> Export:
    if spelling_of_index(index) == Spelling.LEGACY:
        raise ExportError(f"LLaMA-Factory ({SOURCE}) needs transformers{TRANSFORMERS}; "
                          f"{index.transformers_version} is older")
    setting, diff = best(index, mask)
    name = printable(index.name)
    if not diff:
        note = f"LLaMA-Factory trains exactly the plan's parameters with these keys ({counts_line(index, mask)})"
    else:
        note = (f"LLaMA-Factory cannot express this plan on {name}; "
                + describe(index, diff, "the closest setting (below)"))
    if index.model_type not in COMPOSITE_MODELS:
        note += (f"; LLaMA-Factory does not register {index.model_type} as a composite model, so its "
                 "freeze_vision_tower / freeze_multi_modal_projector / freeze_language_model change nothing here")
    unusable = _usability(index, note)
    verdict = "NOT USABLE" if unusable else "NOT EXACT" if diff else "EXACT"
    head = [f"### LLaMA-Factory ({SOURCE}) keys for the freezelab plan on {name}",
            f"### {counts_line(index, mask)}",
            *comment_lines("### ", f"the keys match module names, which transformers releases from "
                           f"{MODEL_LEVEL_SINCE} on spell alike (names here: transformers {index.transformers_version}). "
                           f"LLaMA-Factory runs on transformers{TRANSFORMERS}"),
            f"### {verdict}: {printable(unusable or note)}"]
    return Export("llamafactory", "\n".join(head + setting.yaml_lines()) + "\n", not diff and not unusable,
                  unusable or note, diff.numel(index), "yaml")
