"""Export target: ms-swift `swift sft` flags for full-parameter training (--tuner_type full).

The selection logic below mirrors ms-swift at modelscope/ms-swift commit
3602360a562313afbf2ef6065fdf61f271a2c5b9 (version 4.6.0.dev0):

* swift/arguments/tuner_args.py `TunerArguments._init_multimodal_full`: with
  --tuner_type full on a multimodal model with a registered model_arch,
  --freeze_llm / --freeze_vit / --freeze_aligner (defaults false / true / true)
  append the arch's key prefixes to freeze_parameters, and --freeze_aligner
  false appends the aligner to trainable_parameters instead.
* swift/pipelines/train/tuner.py `prepare_model` (tuner_type == 'full'):
  everything trainable, then `freeze_parameters`, then `activate_parameters`.
* swift/utils/transformers_utils.py `freeze_parameters` / `activate_parameters`:
  `name.startswith(prefix)` over named_parameters(); trainable_parameters win.
* swift/model/model_arch.py: LLaVA-HF models (Llava, LlavaNext, LlavaOnevision,
  via swift/model/models/llava.py) use `llava_hf`: language_model
  ['model.language_model', 'lm_head'], aligner 'model.multi_modal_projector',
  vision_tower 'model.vision_tower' (bare 'language_model' / 'multi_modal_projector'
  / 'vision_tower' before transformers 4.52); LlavaNextVideo uses
  `llava_next_video_hf` with the same keys. The aligner does not include
  LLaVA-NeXT's image_newline. ms-swift registers no VipLlava model.
  InternVL (-hf), PaliGemma, Gemma 3 and Mistral 3 use `llava_hf` too
  (swift/model/models/internlm.py, gemma.py, mistral.py). Qwen2-VL and
  Qwen2.5-VL use `qwen2_vl`: language_model ['model.language_model', 'lm_head'],
  aligner 'model.visual.merger', vision_tower 'model.visual' (the merger's
  prefix too: --freeze_vit freezes it, --freeze_aligner false trains it back);
  Qwen3-VL `qwen3_vl`: aligner ['model.visual.merger',
  'model.visual.deepstack_merger_list']. Idefics3 uses `idefics3`:
  language_model 'model.text_model' (lm_head is in no key), aligner
  'model.connector', vision_tower 'model.vision_model' (models/mllm.py).
  SmolVLMForConditionalGeneration is not registered.

Because trainable_parameters / freeze_parameters take any name prefixes, every
plan is expressible; the export picks the switches that need the fewest
explicit prefixes. Earlier ms-swift releases spelled --tuner_type as --train_type.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from freezelab.exports.base import (Difference, Export, closest, comment_lines, compress, counts_line, describe,
                                    printable)
from freezelab.exports.naming import Spelling, names_line, spelling_of_index
from freezelab.index import ModelIndex
from freezelab.plans import Plan

SOURCE = "modelscope/ms-swift @ 3602360"
TRANSFORMERS = ">=4.33,<5.17.0"  # requirements/framework.txt: the releases ms-swift runs on


@dataclass(frozen=True)
class ModelKeys:
    language_model: tuple[str, ...]
    aligner: tuple[str, ...]
    vision_tower: tuple[str, ...]
    generator: tuple[str, ...] = ()


_LLAVA_HF = ModelKeys(("model.language_model", "lm_head"), ("model.multi_modal_projector",), ("model.vision_tower",))
_LLAVA_HF_LEGACY = ModelKeys(("language_model",), ("multi_modal_projector",), ("vision_tower",))
_QWEN2_VL = ModelKeys(("model.language_model", "lm_head"), ("model.visual.merger",), ("model.visual",))
_QWEN3_VL = ModelKeys(("model.language_model", "lm_head"),
                      ("model.visual.merger", "model.visual.deepstack_merger_list"), ("model.visual",))
_IDEFICS3 = ModelKeys(("model.text_model",), ("model.connector",), ("model.vision_model",))
_LLAVA_HF_CLASSES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                     "LlavaOnevisionForConditionalGeneration", "LlavaNextVideoForConditionalGeneration",
                     "InternVLForConditionalGeneration", "PaliGemmaForConditionalGeneration",
                     "Gemma3ForConditionalGeneration", "Mistral3ForConditionalGeneration")
# model class -> model_arch keys for transformers >= 4.52 (the names freezelab reads)
_ARCH: dict[str, ModelKeys] = {
    **dict.fromkeys(_LLAVA_HF_CLASSES, _LLAVA_HF),
    "Qwen2VLForConditionalGeneration": _QWEN2_VL, "Qwen2_5_VLForConditionalGeneration": _QWEN2_VL,
    "Qwen3VLForConditionalGeneration": _QWEN3_VL,
    "Idefics3ForConditionalGeneration": _IDEFICS3,
}
_REGISTERED = tuple(_ARCH)
# model_arch.py's keys for transformers < 4.52 (transformers_ge_4_52 false)
_LEGACY: dict[ModelKeys, ModelKeys] = {
    _LLAVA_HF: _LLAVA_HF_LEGACY,
    _QWEN2_VL: ModelKeys(("model", "lm_head"), ("visual.merger",), ("visual",)),
}


@dataclass(frozen=True)
class Setting:
    freeze_llm: bool = False      # ms-swift's defaults
    freeze_vit: bool = True
    freeze_aligner: bool = True
    freeze_parameters: tuple[str, ...] = ()
    trainable_parameters: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        out = ["--tuner_type full", f"--freeze_vit {str(self.freeze_vit).lower()}",
               f"--freeze_aligner {str(self.freeze_aligner).lower()}", f"--freeze_llm {str(self.freeze_llm).lower()}"]
        if self.freeze_parameters:
            out.append("--freeze_parameters " + " ".join(map(shlex.quote, self.freeze_parameters)))
        if self.trainable_parameters:
            out.append("--trainable_parameters " + " ".join(map(shlex.quote, self.trainable_parameters)))
        return out


def model_keys(index: ModelIndex) -> ModelKeys | None:
    """model_arch.py's keys for this model class, as chosen by the transformers version."""
    keys = _ARCH.get(index.model_class)
    if keys is None:
        return None
    if spelling_of_index(index) == Spelling.LEGACY:
        return _LEGACY.get(keys, keys)
    return keys


def expanded(index: ModelIndex, s: Setting) -> tuple[list[str], list[str]]:
    """TunerArguments._init_multimodal_full: (freeze_parameters, trainable_parameters) after the switches."""
    freeze, train = list(s.freeze_parameters), list(s.trainable_parameters)
    keys = model_keys(index)
    if keys is None:
        return freeze, train
    if s.freeze_llm:
        freeze += keys.language_model
    if s.freeze_vit:
        freeze += keys.vision_tower
    if s.freeze_aligner:
        freeze += keys.aligner
    else:
        train += keys.aligner
    freeze += keys.generator
    return freeze, train


def trainable(index: ModelIndex, s: Setting) -> list[bool]:
    """prepare_model (tuner_type 'full'): all trainable, freeze by prefix, then activate by prefix."""
    freeze, train = map(tuple, expanded(index, s))
    out = []
    for p in index.params:
        on = not p.name.startswith(freeze)  # startswith(tuple): any prefix, as freeze_parameters loops
        if p.name.startswith(train):
            on = True
        out.append(on)
    return out


_SWITCHES = ((False, True, True), (True, True, True), (False, True, False), (True, True, False),
             (False, False, False), (True, False, False), (False, False, True), (True, False, True))  # defaults first


def _candidates(index: ModelIndex, mask: Sequence[bool]) -> Iterator[tuple[Setting, list[bool]]]:
    """Each switch combination, completed with the fewest prefixes; fewest prefixes first."""
    train = {i for i, on in enumerate(mask) if on}
    frozen = set(range(len(mask))) - train
    found = []
    for order, (llm, vit, aligner) in enumerate(_SWITCHES):
        switches = Setting(llm, vit, aligner)
        got = trainable(index, switches)
        to_train = {i for i in train if not got[i]}
        to_freeze = {i for i in frozen if got[i]}
        s = Setting(llm, vit, aligner, tuple(compress(index, to_freeze, frozen)),
                    tuple(compress(index, to_train, train)))
        found.append((len(s.freeze_parameters) + len(s.trainable_parameters), order, s))
    for _, _, s in sorted(found, key=lambda t: t[:2]):
        yield s, trainable(index, s)


def best(index: ModelIndex, mask: Sequence[bool]) -> tuple[Setting, Difference]:
    setting, diff = closest(index, mask, _candidates(index, mask))
    assert isinstance(setting, Setting)
    return setting, diff


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool]) -> Export:
    setting, diff = best(index, mask)
    exact = not diff
    name = printable(index.name)
    if exact:
        note = f"ms-swift trains exactly the plan's parameters with these flags ({counts_line(index, mask)})"
    else:  # only when a name prefix also catches a parameter it should not
        note = f"ms-swift cannot express this plan on {name}; " + describe(index, diff, "the closest setting (below)")
    if model_keys(index) is None:
        note += (f"; ms-swift registers no model for {index.model_class}: --freeze_vit / --freeze_aligner / "
                 "--freeze_llm do nothing there, the prefix lists do the work")
    head = [f"# ms-swift `swift sft` ({SOURCE}) flags for the freezelab plan on {name}",
            f"# {counts_line(index, mask)}",
            *comment_lines("# ", f"{names_line(index)}. ms-swift runs on transformers{TRANSFORMERS}"),
            f"# {'EXACT' if exact else 'NOT EXACT'}: {printable(note)}"]
    flags = setting.flags()
    body = [f"{f} \\" for f in flags[:-1]] + flags[-1:]
    return Export("swift", "\n".join(head + body) + "\n", exact, note, diff.numel(index), "shell")
