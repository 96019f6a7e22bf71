"""Export target LLaMA-Factory, for plans with adapters or a quantized base: `finetuning_type: lora`.

The mirror follows hiyouga/LLaMA-Factory at the commit of freezelab.exports.llamafactory:

* model/adapter.py `_setup_lora_tuning`: `lora_target: all` becomes `find_all_linear_modules(model,
  freeze_vision_tower)`, then `patch_target_modules`; `additional_target` becomes PEFT's modules_to_save
  (trained in full, as a copy); `lora_rank`, `lora_alpha` (default rank * 2), `lora_dropout`, `use_dora`.
* model/model_utils/misc.py `find_all_linear_modules`: the last name segment of every module whose class
  name contains "Linear" (not "Embedding") and whose name contains none of lm_head, the composite model's
  projector keys and, with freeze_vision_tower, its vision keys (substring tests).
* model/model_utils/visual.py `patch_target_modules`: on a registered composite model (llava, llava_next,
  llava_next_video) every module whose name contains a target and none of the forbidden modules
  (`get_forbidden_modules`: vision tower / projector / language model keys as the three freeze_* keys say);
  other models pass the names to PEFT, which matches them as name suffixes across the whole model.
* model/model_utils/quantization.py: `quantization_bit` 4 or 8 builds a BitsAndBytesConfig without skip
  modules, so transformers stores every nn.Linear in 4 / 8 bits except the output head and tied weights
  (`get_keys_to_not_convert`): the vision tower and the projector too.

PEFT (0.21) then freezes every base parameter, adds the adapters, and trains the modules_to_save (names
matched with `endswith`); no adapter goes inside a module to save.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from freezelab.adapters import Adapters, linears, output_head
from freezelab.exports.adapted import LoraOutcome, closest, counts_line, linear_targets
from freezelab.exports.base import Export, ExportError, comment_lines, compress, printable
from freezelab.exports.llamafactory import (
    COMPOSITE_MODELS,
    SOURCE,
    TRANSFORMERS,
    Refused,
    Setting,
    _usability,
    forbidden_modules,
)
from freezelab.exports.naming import MODEL_LEVEL_SINCE, Spelling, spelling_of_index
from freezelab.index import ModelIndex
from freezelab.lora import QuantBits, Quantization, QuantType


@dataclass(frozen=True)
class LoraSetting:
    lora_rank: int = 8
    lora_alpha: float | None = None                 # None: lora_rank * 2
    lora_dropout: float = 0.0
    lora_target: tuple[str, ...] = ("all",)
    use_dora: bool = False
    additional_target: tuple[str, ...] = ()
    freeze_vision_tower: bool = True
    freeze_multi_modal_projector: bool = True
    freeze_language_model: bool = False
    quantization_bit: int | None = None
    quantization_type: str = "nf4"
    double_quantization: bool = True

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else self.lora_rank * 2

    def yaml_lines(self) -> list[str]:
        lines = ["finetuning_type: lora", f"lora_rank: {self.lora_rank}", f"lora_alpha: {self.alpha:g}",
                 f"lora_dropout: {self.lora_dropout:g}", f"lora_target: {','.join(self.lora_target)}"]
        if self.use_dora:
            lines.append("use_dora: true")
        if self.additional_target:
            lines.append(f"additional_target: {','.join(self.additional_target)}")
        lines += [f"freeze_vision_tower: {str(self.freeze_vision_tower).lower()}",
                  f"freeze_multi_modal_projector: {str(self.freeze_multi_modal_projector).lower()}",
                  f"freeze_language_model: {str(self.freeze_language_model).lower()}"]
        if self.quantization_bit is not None:
            lines.append(f"quantization_bit: {self.quantization_bit}")
            if self.quantization_bit == 4:
                lines += [f"quantization_type: {self.quantization_type}",
                          f"double_quantization: {str(self.double_quantization).lower()}"]
        return lines


def _freeze_keys(s: LoraSetting) -> Setting:
    return Setting("lora", s.freeze_vision_tower, s.freeze_multi_modal_projector, s.freeze_language_model)


def find_all_linear_modules(index: ModelIndex, s: LoraSetting) -> list[str]:
    """misc.py find_all_linear_modules: last name segments of the Linear modules outside the forbidden ones."""
    forbidden = {"lm_head"}
    keys = COMPOSITE_MODELS.get(index.model_type)
    if keys is not None:
        forbidden.update(keys.projector_keys)
        if s.freeze_vision_tower:
            forbidden.update(keys.vision_model_keys)
    names: dict[str, None] = {}
    for m in index.modules:
        if any(f in m.path for f in forbidden):
            continue
        if "Linear" in m.type and "Embedding" not in m.type:
            names[m.path.split(".")[-1]] = None
    return list(names)


def _to_save(path: str, s: LoraSetting) -> bool:
    return any(path.endswith(t) for t in s.additional_target)


def _inside_saved(path: str, s: LoraSetting) -> bool:
    """PEFT's check_target_module_exists: no adapter at or under a module to save."""
    return any(re.match(rf"(^|.*\.){m}($|\..*)", path) for m in s.additional_target)


def adapted_paths(index: ModelIndex, s: LoraSetting) -> list[str]:
    """The modules PEFT gives adapters; Refused when one of them is not a Linear layer (PEFT raises)."""
    targets = find_all_linear_modules(index, s) if s.lora_target == ("all",) else list(s.lora_target)
    paths = [m.path for m in index.modules if m.path]
    if index.model_type in COMPOSITE_MODELS:  # patch_target_modules: full names, then PEFT's exact match
        forbidden = forbidden_modules(index.model_type, _freeze_keys(s))
        chosen = [p for p in paths if any(t in p for t in targets) and not any(f in p for f in forbidden)]
    else:  # PEFT: a list of names matches a module name or its suffix after a dot
        chosen = [p for p in paths if any(p == t or p.endswith("." + t) for t in targets)]
    chosen = [p for p in chosen if not _inside_saved(p, s)]
    return linear_targets(index, chosen, Refused)


def quantized(index: ModelIndex, s: LoraSetting) -> frozenset[int]:
    """transformers' default for a BitsAndBytesConfig without skip modules: every nn.Linear but the head."""
    if s.quantization_bit is None:
        return frozenset()
    head = output_head(index)
    tied = {i for p in index.params if p.aliases for i in [index.by_name[p.name]]}
    return frozenset(lin.weight for lin in linears(index) if lin.path != head and lin.weight not in tied)


def outcome(index: ModelIndex, s: LoraSetting) -> LoraOutcome:
    saved = {m.path for m in index.modules if m.path and _to_save(m.path, s)}
    trainable = [False] * len(index.params)
    for path in saved:
        for i in index.module_by_path[path].params:
            trainable[i] = True
    quant = Quantization(QuantBits.NF4 if s.quantization_bit == 4 else QuantBits.INT8, s.quantization_type,
                         s.double_quantization) if s.quantization_bit else Quantization()
    q = quantized(index, s)
    for i in q:  # a quantized module to save cannot train (bitsandbytes weights have no gradient)
        trainable[i] = False
    return LoraOutcome(tuple(trainable), tuple((p, s.lora_rank, s.alpha) for p in adapted_paths(index, s)),
                       s.lora_dropout, s.use_dora, q, quant)


# -- choosing the setting -------------------------------------------------------------------

_FLAGS = ((True, True, False), (False, True, False), (True, False, False), (False, False, False),
          (True, True, True), (False, True, True), (True, False, True), (False, False, True))


def _base(mask: Sequence[bool], adapters: Adapters, index: ModelIndex) -> LoraSetting:
    s = adapters.settings
    first = adapters.layers[0] if adapters.layers else None
    r, alpha = (first.r, first.alpha) if first else (s.r, s.alpha)
    q = adapters.quant
    bits = {QuantBits.NF4: 4, QuantBits.INT8: 8}.get(q.bits)
    saved = tuple(p.rstrip(".") for p in compress(index, {i for i, on in enumerate(mask) if on}))
    return LoraSetting(r, alpha, s.dropout, ("all",), s.dora, saved, quantization_bit=bits,
                       quantization_type=q.quant_type.value if q.quant_type else QuantType.NF4.value,
                       double_quantization=q.double_quant)


def candidates(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> Iterator[LoraSetting]:
    """`lora_target: all` under each freeze switch, then the adapted layers' own last name segments."""
    base = _base(mask, adapters, index)
    flags = _FLAGS if index.model_type in COMPOSITE_MODELS else _FLAGS[:1]
    leaves = tuple(dict.fromkeys(a.path.split(".")[-1] for a in adapters.layers)) or ("all",)
    for target in (("all",), leaves):
        for fvt, fmmp, flm in flags:
            yield replace(base, lora_target=target, freeze_vision_tower=fvt, freeze_multi_modal_projector=fmmp,
                          freeze_language_model=flm)


def best(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> tuple[LoraSetting, list[str], int]:
    found = closest(index, mask, adapters, candidates(index, mask, adapters), outcome, Refused)
    assert found is not None  # `lora_target: all` is never refused on a LLaVA model
    return found


def render(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> Export:
    if spelling_of_index(index) == Spelling.LEGACY:
        raise ExportError(f"LLaMA-Factory ({SOURCE}) needs transformers{TRANSFORMERS}; "
                          f"{index.transformers_version} is older")
    setting, phrases, n = best(index, mask, adapters)
    name = printable(index.name)
    counts = counts_line(index, mask, adapters)
    if not phrases:
        note = f"LLaMA-Factory gives exactly the plan's adapters and trainable parameters with these keys ({counts})"
    else:
        note = f"LLaMA-Factory cannot express this plan on {name}; the closest setting (below) " + "; ".join(phrases)
    unusable = _usability(index, note)
    verdict = "NOT USABLE" if unusable else "NOT EXACT" if phrases else "EXACT"
    head = [f"### LLaMA-Factory ({SOURCE}) LoRA keys for the freezelab plan on {name}",
            f"### {counts}",
            *comment_lines("### ", f"the keys match module names, which transformers releases from "
                           f"{MODEL_LEVEL_SINCE} on spell alike (names here: transformers {index.transformers_version}). "
                           f"LLaMA-Factory runs on transformers{TRANSFORMERS}"),
            f"### {verdict}: {printable(unusable or note)}"]
    return Export("llamafactory", "\n".join(head + setting.yaml_lines()) + "\n", not phrases and not unusable,
                  unusable or note, n, "yaml")
