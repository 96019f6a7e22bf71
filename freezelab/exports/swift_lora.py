"""Export target ms-swift, for plans with adapters or a quantized base: `swift sft --tuner_type lora`
(`--train_type lora` in releases before 4.x).

The mirror follows modelscope/ms-swift at the commit of freezelab.exports.swift:

* swift/pipelines/train/tuner.py `get_target_modules`: `--target_modules all-linear` on a multimodal
  model becomes `get_multimodal_target_regex(model, freeze_llm, freeze_vit, freeze_aligner)`; other names
  go to PEFT as a list (suffix matches over the whole model); `--target_regex` replaces target_modules
  (PEFT then `re.fullmatch`es it against every module name). `--modules_to_save` trains whole modules.
* swift/utils/transformers_utils.py `get_multimodal_target_regex` / `find_all_linears` / `find_layers`:
  for each of the arch's language-model, vision-tower and aligner prefixes the switches leave on, the
  Linear modules below it by (shortest unambiguous) name, as `^(prefix(?=\\.).*\\.(names)|...)$`; an
  `lm_head` prefix that is itself a Linear adds nothing.
* swift/arguments/base_args/quant_args.py: `--quant_method bnb --quant_bits 4|8` with
  `llm_int8_skip_modules` = the arch's vision tower and aligner prefixes plus lm_head, so only the
  language model's Linear layers are stored quantized.
* --lora_rank (default 8), --lora_alpha (32), --lora_dropout (0.05), --use_dora; PEFT freezes the rest.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from freezelab.adapters import Adapters, linears
from freezelab.exports.adapted import LoraOutcome, closest, counts_line, linear_targets
from freezelab.exports.base import Export, comment_lines, compress, printable
from freezelab.exports.naming import names_line
from freezelab.exports.swift import SOURCE, TRANSFORMERS, model_keys
from freezelab.index import ModelIndex
from freezelab.lora import QuantBits, Quantization
from freezelab.peft_targets import module_pattern

_IGNORE = ("lm_head", "score", "v_head", "classifier", "lora_A", "lora_B", "base_layer")


class Refused(Exception):
    """ms-swift or PEFT would stop with an error for this setting."""


@dataclass(frozen=True)
class LoraSetting:
    lora_rank: int = 8
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    use_dora: bool = False
    target_modules: tuple[str, ...] = ("all-linear",)
    target_regex: str | None = None
    freeze_llm: bool = False
    freeze_vit: bool = True
    freeze_aligner: bool = True
    modules_to_save: tuple[str, ...] = ()
    quant_bits: int | None = None
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True

    def flags(self) -> list[str]:
        out = ["--tuner_type lora", f"--lora_rank {self.lora_rank}", f"--lora_alpha {self.lora_alpha:g}",
               f"--lora_dropout {self.lora_dropout:g}"]
        if self.use_dora:
            out.append("--use_dora true")
        if self.target_regex is not None:
            out.append(f"--target_regex {shlex.quote(self.target_regex)}")
        else:
            out.append("--target_modules " + " ".join(map(shlex.quote, self.target_modules)))
        out += [f"--freeze_vit {str(self.freeze_vit).lower()}", f"--freeze_aligner {str(self.freeze_aligner).lower()}",
                f"--freeze_llm {str(self.freeze_llm).lower()}"]
        if self.modules_to_save:
            out.append("--modules_to_save " + " ".join(map(shlex.quote, self.modules_to_save)))
        if self.quant_bits is not None:
            out += ["--quant_method bnb", f"--quant_bits {self.quant_bits}"]
            if self.quant_bits == 4:
                out += [f"--bnb_4bit_quant_type {self.bnb_4bit_quant_type}",
                        f"--bnb_4bit_use_double_quant {str(self.bnb_4bit_use_double_quant).lower()}"]
        return out


# -- the mirror --------------------------------------------------------------------------------

def _linear_cond(name: str, type_name: str) -> bool:
    return "linear" in type_name.lower() and all(layer not in name for layer in _IGNORE)


def find_all_linears(index: ModelIndex, prefix: str = "") -> list[str]:
    """find_layers over the module at `prefix` (the whole model for "") with find_all_linears' condition: each
    Linear's last name segment, lengthened while a non-Linear module's (digit-generalised) name ends with it."""
    if prefix:
        modules = [("", index.module_by_path[prefix].type),
                   *((m.path[len(prefix) + 1:], m.type) for m in index.modules if m.path.startswith(prefix + "."))]
    else:
        modules = [(m.path, m.type) for m in index.modules]
    general = [(re.sub(r"\d+\.", "{}.", name), kind) for name, kind in modules]
    inner = {name for name, kind in general if not _linear_cond(name, kind)}
    found: dict[str, None] = {}
    for name, kind in modules:
        if not _linear_cond(name, kind):
            continue
        parts = name.split(".")
        leaf = parts.pop()
        for node in inner:
            while parts and node.endswith(re.sub(r"\d+\.", "{}.", leaf)):
                leaf = f"{parts.pop()}.{leaf}"
        found[leaf] = None
    return list(found)


def multimodal_regex(index: ModelIndex, s: LoraSetting) -> str:
    keys = model_keys(index)
    assert keys is not None
    prefixes = ([] if s.freeze_llm else list(keys.language_model)) + ([] if s.freeze_vit else list(keys.vision_tower)) \
        + ([] if s.freeze_aligner else list(keys.aligner))
    if not prefixes:
        raise Refused("modules: []")  # the assert in get_multimodal_target_regex
    res = []
    for module in prefixes:
        info = index.module_by_path.get(module)
        if info is None or (info.type == "Linear" and module.endswith("lm_head")):
            continue
        names = find_all_linears(index, module)
        if names:
            res.append(rf"{re.escape(module)}(?=\.).*\.({'|'.join(names)})")
    return rf"^({'|'.join(res)})$"


def adapted_paths(index: ModelIndex, s: LoraSetting) -> list[str]:
    paths = [m.path for m in index.modules if m.path]
    if s.target_regex is not None:
        chosen = [p for p in paths if re.fullmatch(s.target_regex, p)]
    elif "all-linear" in s.target_modules and model_keys(index) is not None:
        pattern = multimodal_regex(index, s)
        chosen = [p for p in paths if re.fullmatch(pattern, p)]
    else:
        names = [t for t in s.target_modules if t != "all-linear"]
        if "all-linear" in s.target_modules:  # a model ms-swift does not register: find_all_linears over all
            names += find_all_linears(index)
        chosen = [p for p in paths if any(p == t or p.endswith("." + t) for t in names)]
    chosen = [p for p in chosen if not any(re.match(rf"(^|.*\.){m}($|\..*)", p) for m in s.modules_to_save)]
    return linear_targets(index, chosen, Refused)


def quantized(index: ModelIndex, s: LoraSetting) -> frozenset[int]:
    """BitsAndBytesConfig(llm_int8_skip_modules=vision tower + aligner + lm_head), matched as transformers'
    should_convert_module does (a prefix up to a module boundary, or a suffix)."""
    if s.quant_bits is None:
        return frozenset()
    keys = model_keys(index)
    skip = [*keys.vision_tower, *keys.aligner, "lm_head"] if keys is not None else ["lm_head"]
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return frozenset(lin.weight for lin in linears(index)
                     if not any(re.match(rf"(?:{k}){boundary}", lin.path) or lin.path.endswith(k) for k in skip))


def outcome(index: ModelIndex, s: LoraSetting) -> LoraOutcome:
    trainable = [False] * len(index.params)
    for m in index.modules:
        if m.path and any(m.path.endswith(t) for t in s.modules_to_save):
            for i in m.params:
                trainable[i] = True
    q = quantized(index, s)
    for i in q:
        trainable[i] = False
    quant = Quantization(QuantBits.NF4 if s.quant_bits == 4 else QuantBits.INT8, s.bnb_4bit_quant_type,
                         s.bnb_4bit_use_double_quant) if s.quant_bits else Quantization()
    return LoraOutcome(tuple(trainable), tuple((p, s.lora_rank, s.lora_alpha) for p in adapted_paths(index, s)),
                       s.lora_dropout, s.use_dora, q, quant)


# -- choosing the setting --------------------------------------------------------------------

_SWITCHES = ((False, True, True), (True, True, True), (False, True, False), (True, True, False),
             (False, False, True), (True, False, True), (False, False, False), (True, False, False))


def candidates(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> Iterator[LoraSetting]:
    """all-linear under each switch combination (defaults first), then the exact adapted set as a regex."""
    s = adapters.settings
    first = adapters.layers[0] if adapters.layers else None
    r, alpha = (first.r, first.alpha) if first else (s.r, s.alpha)
    q = adapters.quant
    saved = tuple(p.rstrip(".") for p in compress(index, {i for i, on in enumerate(mask) if on}))
    base = LoraSetting(r, alpha, s.dropout, s.dora, modules_to_save=saved,
                       quant_bits={QuantBits.NF4: 4, QuantBits.INT8: 8}.get(q.bits),
                       bnb_4bit_quant_type=q.quant_type.value, bnb_4bit_use_double_quant=q.double_quant)
    switches = _SWITCHES if model_keys(index) is not None else _SWITCHES[:1]
    for llm, vit, aligner in switches:
        yield replace(base, freeze_llm=llm, freeze_vit=vit, freeze_aligner=aligner)
    if adapters.layers:
        yield replace(base, target_regex=module_pattern(index, [a.path for a in adapters.layers]))


def best(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> tuple[LoraSetting, list[str], int]:
    found = closest(index, mask, adapters, candidates(index, mask, adapters), outcome, Refused)
    assert found is not None
    return found


def render(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> Export:
    setting, phrases, n = best(index, mask, adapters)
    name = printable(index.name)
    counts = counts_line(index, mask, adapters)
    if not phrases:
        note = f"ms-swift gives exactly the plan's adapters and trainable parameters with these flags ({counts})"
    else:
        note = f"ms-swift cannot express this plan on {name}; the closest setting (below) " + "; ".join(phrases)
    head = [f"# ms-swift `swift sft` ({SOURCE}) LoRA flags for the freezelab plan on {name} "
            "(--tuner_type was --train_type before ms-swift 4)",
            f"# {counts}",
            *comment_lines("# ", f"{names_line(index)}. ms-swift runs on transformers{TRANSFORMERS}"),
            f"# {'EXACT' if not phrases else 'NOT EXACT'}: {printable(note)}"]
    flags = setting.flags()
    body = [f"{f} \\" for f in flags[:-1]] + flags[-1:]
    return Export("swift", "\n".join(head + body) + "\n", not phrases, note, n, "shell")
