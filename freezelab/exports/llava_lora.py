"""Export target LLaVA train.py, for plans with adapters or a quantized base: `--lora_enable True`.

Mirrored from the scripts of freezelab.exports.llava (the standard flow: start from a language-model
checkpoint; the vision modules are created after the adapters):

* `find_all_linear_names(model)`: the last name segment of every torch.nn.Linear whose name contains none
  of mm_projector / vision_tower / vision_resampler, without lm_head. At that point the model is the
  language model alone, so `get_peft_model` puts adapters on every Linear of the LLM body (not the head),
  with `--lora_r` (default 64), `--lora_alpha` (16), `--lora_dropout` (0.05); there is no DoRA flag.
* `initialize_vision_modules` then creates the projector (trainable unless `--freeze_mm_mlp_adapter`; its
  learning rate is `--mm_projector_lr`), LLaVA-NeXT's image_newline and vision resampler (trainable), and
  the vision tower (always frozen). `--tune_mm_mlp_adapter` would freeze the adapters too: never emitted.
* `--bits 4|8`: BitsAndBytesConfig with `llm_int8_skip_modules=["mm_projector"]` (haotian-liu/LLaVA and
  ViP-LLaVA), which replaces transformers' default skips, so lm_head is quantized too; LLaVA-NeXT passes
  no skip modules, so transformers leaves lm_head out. `--quant_type nf4|fp4`, `--double_quant`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from freezelab.adapters import Adapters, linears, output_head
from freezelab.exports.adapted import LoraOutcome, compare, counts_line, plan_outcome
from freezelab.exports.base import Export, printable
from freezelab.exports.llava import HAOTIAN, NEXT, VIP, parts
from freezelab.index import ModelIndex
from freezelab.lora import QuantBits, Quantization

PROJECTOR_LR = "2e-5"   # scripts/v1_5/finetune_lora.sh: --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5


@dataclass(frozen=True)
class LoraFlags:
    lora_r: int = 64
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    freeze_mm_mlp_adapter: bool = False
    bits: int = 16
    quant_type: str = "nf4"
    double_quant: bool = True
    source: str = HAOTIAN

    def flags(self) -> list[str]:
        out = [f"--lora_enable True --lora_r {self.lora_r} --lora_alpha {self.lora_alpha:g} "
               f"--lora_dropout {self.lora_dropout:g}"]
        out.append("--freeze_mm_mlp_adapter True" if self.freeze_mm_mlp_adapter
                   else f"--mm_projector_lr {PROJECTOR_LR}")
        if self.bits != 16:
            out.append(f"--bits {self.bits}" + (f" --quant_type {self.quant_type} --double_quant {self.double_quant}"
                                                if self.bits == 4 else ""))
        return out


def outcome(index: ModelIndex, f: LoraFlags) -> LoraOutcome:
    of = parts(index)
    trainable = tuple(p in ("image_newline", "vision_resampler") or (p == "mm_projector" and not f.freeze_mm_mlp_adapter)
                      for p in of)
    head = output_head(index)
    body = [lin for lin in linears(index) if lin.path != head and of[lin.weight] == "llm_body"]
    quantized: frozenset[int] = frozenset()
    if f.bits != 16:
        llm = [lin for lin in linears(index) if lin.path == head or of[lin.weight] == "llm_body"]
        quantized = frozenset(lin.weight for lin in llm if f.source != NEXT or lin.path != head)
    quant = Quantization(QuantBits.NF4 if f.bits == 4 else QuantBits.INT8, f.quant_type, f.double_quant) \
        if f.bits != 16 else Quantization()
    return LoraOutcome(trainable, tuple((lin.path, f.lora_r, f.lora_alpha) for lin in body), f.lora_dropout, False,
                       quantized, quant)


def _source(index: ModelIndex) -> str:
    if index.model_type == "vipllava":
        return VIP
    text_type = index.config.get("text_config", {}).get("model_type")
    return HAOTIAN if index.model_type == "llava" and text_type == "llama" else NEXT


def candidates(index: ModelIndex, adapters: Adapters) -> Iterator[LoraFlags]:
    s, q = adapters.settings, adapters.quant
    first = adapters.layers[0] if adapters.layers else None
    r, alpha = (first.r, first.alpha) if first else (s.r, s.alpha)
    bits = {QuantBits.NF4: 4, QuantBits.INT8: 8}.get(q.bits, 16)
    for freeze in (False, True):
        yield LoraFlags(r, alpha, s.dropout, freeze, bits, q.quant_type.value, q.double_quant, _source(index))


def best(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> tuple[LoraFlags, list[str], int]:
    want = plan_outcome(mask, adapters)
    scored = [(f, *compare(index, want, outcome(index, f))) for f in candidates(index, adapters)]
    return min(scored, key=lambda t: (len(t[1]), t[2]))


def render(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> Export:
    flags, phrases, n = best(index, mask, adapters)
    name = printable(index.name)
    script = flags.source.split(" @ ")[0]
    counts = counts_line(index, mask, adapters)
    if not phrases:
        note = f"{script} gives exactly the plan's adapters and trainable parameters with these flags ({counts})"
    else:
        note = (f"LLaVA's training scripts cannot express this plan on {name} (adapters on every Linear of the LLM "
                f"body only); the closest setting (below, {script}) " + "; ".join(phrases))
    head = [f"# {flags.source} LoRA flags for the freezelab plan on {name}",
            "# compared by part (vision tower, mm_projector, image_newline, LLM body, lm_head): "
            "LLaVA's own model classes name them differently",
            f"# {'EXACT' if not phrases else 'NOT EXACT'}: {printable(note)}"]
    lines = flags.flags()
    body = [f"{line} \\" for line in lines[:-1]] + lines[-1:]
    return Export("llava", "\n".join(head + body) + "\n", not phrases, note, n, "shell")
