"""Export target: the flags of LLaVA's own training scripts.

LLaVA's repositories train their own model classes (LlavaLlamaForCausalLM,
LlavaQwenForCausalLM, ...), whose parts correspond one to one to the
transformers LLaVA classes under other names: model.vision_tower (vision
tower), model.mm_projector (multi_modal_projector), model.image_newline,
model.vision_resampler, model.embed_tokens / layers / norm (the LLM body,
under model.model) and lm_head. So the mirror works on those parts, taken
from the index (found by walking module objects), not on name strings.

Two scripts, each mirrored from its `train()`:

* haotian-liu/LLaVA llava/train/train.py @ c121f0432da27facab705978f83c4ada465e46fd
  (LLaVA-1.5; it builds only Llama and MPT language models, so it is offered for
  llava models with a Llama LLM), and its fork mu-cai/ViP-LLaVA
  llava/train/train.py @ ab4e364125ba55767d35025ca3af6ee5b90b69e6 (the same
  logic; the only script for vipllava): everything starts trainable; --freeze_backbone runs
  `model.model.requires_grad_(False)` before the vision modules exist, so it
  freezes the LLM body but not lm_head; `initialize_vision_modules` then
  creates mm_projector (and image_newline) trainable, and the vision tower is
  always frozen (`CLIPVisionTower.load_model` calls requires_grad_(False));
  --tune_mm_mlp_adapter freezes everything and unfreezes mm_projector only;
  --freeze_mm_mlp_adapter freezes mm_projector. The mirror follows this
  standard flow (start from a language-model checkpoint) with
  --mm_use_im_start_end False (LLaVA-1.5's setting; when true,
  --tune_mm_mlp_adapter also trains the input embeddings).
* LLaVA-VL/LLaVA-NeXT llava/train/train.py @ df179663ae8b83207df100a1f7af24caec633ff9
  --mm_tunable_parts (overrides the older flags): everything frozen, then
  mm_mlp_adapter -> mm_projector, mm_vision_resampler -> vision_resampler,
  mm_vision_tower -> names containing "vision_tower", mm_language_model ->
  every name without vision_tower / mm_projector / vision_resampler, which
  includes lm_head and image_newline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations

from freezelab.exports.base import Difference, Export, closest, counts_line, describe, printable
from freezelab.index import ModelIndex
from freezelab.plans import Plan

HAOTIAN = "haotian-liu/LLaVA llava/train/train.py @ c121f04"
VIP = "mu-cai/ViP-LLaVA llava/train/train.py @ ab4e364"
NEXT = "LLaVA-VL/LLaVA-NeXT llava/train/train.py @ df17966"
PARTS = ("vision_tower", "mm_projector", "image_newline", "vision_resampler", "llm_body", "lm_head")


def parts(index: ModelIndex) -> list[str]:
    """The LLaVA-repository part of each parameter (one of PARTS), from the index's components."""
    module_roots = [r for r in index.roots["projector"] if r in index.module_by_path]
    bare = {r for r in index.roots["projector"] if r not in index.module_by_path}
    projector_of = {r: "mm_projector" if index.module_by_path[r].type.endswith("Projector") else "vision_resampler"
                    for r in module_roots}
    out = []
    for p in index.params:
        if p.component == "vision":
            out.append("vision_tower")
        elif p.component == "projector":
            root = next((r for r in module_roots if p.name.startswith(r + ".")), None)
            out.append("image_newline" if p.name in bare or root is None else projector_of[root])
        else:
            out.append("lm_head" if p.part == "lm_head" else "llm_body")
    return out


@dataclass(frozen=True)
class LlavaFlags:
    """haotian-liu/LLaVA (and ViP-LLaVA) train.py flags."""

    tune_mm_mlp_adapter: bool = False
    freeze_backbone: bool = False
    freeze_mm_mlp_adapter: bool = False
    source: str = HAOTIAN

    def trainable(self, of: Sequence[str]) -> list[bool]:
        on = dict.fromkeys(PARTS, True)                  # from_pretrained: all trainable
        if self.freeze_backbone:
            on["llm_body"] = False                       # model.model.requires_grad_(False)
        on["vision_tower"] = False                       # CLIPVisionTower.load_model
        if self.tune_mm_mlp_adapter:
            on = dict.fromkeys(PARTS, False)             # model.requires_grad_(False)
            on["mm_projector"] = True
        if self.freeze_mm_mlp_adapter:
            on["mm_projector"] = False
        return [on[p] for p in of]

    def flags(self) -> list[str]:
        return [f"--tune_mm_mlp_adapter {self.tune_mm_mlp_adapter}", f"--freeze_backbone {self.freeze_backbone}",
                f"--freeze_mm_mlp_adapter {self.freeze_mm_mlp_adapter}"]


@dataclass(frozen=True)
class TunableParts:
    """LLaVA-NeXT train.py --mm_tunable_parts."""

    parts: tuple[str, ...]
    source = NEXT

    def trainable(self, of: Sequence[str]) -> list[bool]:
        on = dict.fromkeys(PARTS, False)
        if "mm_mlp_adapter" in self.parts:
            on["mm_projector"] = True
        if "mm_vision_resampler" in self.parts:
            on["vision_resampler"] = True
        if "mm_vision_tower" in self.parts:
            on["vision_tower"] = True
        if "mm_language_model" in self.parts:
            for part in ("llm_body", "lm_head", "image_newline"):
                on[part] = True
        return [on[p] for p in of]

    def flags(self) -> list[str]:
        return [f"--mm_tunable_parts {','.join(self.parts)}"]


_NEXT_PARTS = ("mm_vision_tower", "mm_mlp_adapter", "mm_vision_resampler", "mm_language_model")
_FLAG_SETS = ((False, False, False), (True, False, False), (False, False, True), (False, True, False),
              (False, True, True), (True, False, True))  # every distinct outcome, fewest flags first


def _candidates(index: ModelIndex, of: list[str]) -> list[LlavaFlags | TunableParts]:
    """The scripts that can train this model: ViP-LLaVA's for vipllava; LLaVA-1.5's for llava with a
    Llama LLM (then preferred); LLaVA-NeXT's for the llava, llava_next, onevision and video types."""
    if index.model_type == "vipllava":
        return [LlavaFlags(*f, source=VIP) for f in _FLAG_SETS]
    usable = [p for p in _NEXT_PARTS if "vision_resampler" in of or p != "mm_vision_resampler"]
    nxt: list[LlavaFlags | TunableParts] = [TunableParts(c) for k in range(1, len(usable) + 1)
                                            for c in combinations(usable, k)]
    text_type = index.config.get("text_config", {}).get("model_type")
    if index.model_type == "llava" and text_type == "llama":
        return [*(LlavaFlags(*f) for f in _FLAG_SETS), *nxt]
    return nxt


def _scored(index: ModelIndex) -> Iterator[tuple[LlavaFlags | TunableParts, list[bool]]]:
    of = parts(index)
    for c in _candidates(index, of):
        yield c, c.trainable(of)


def best(index: ModelIndex, mask: Sequence[bool]) -> tuple[LlavaFlags | TunableParts, Difference]:
    setting, diff = closest(index, mask, _scored(index))
    assert isinstance(setting, (LlavaFlags, TunableParts))
    return setting, diff


def _not_llava(index: ModelIndex, mask: Sequence[bool]) -> Export:
    """LLaVA's scripts build LLaVA models only: nothing to express for another family."""
    from freezelab.families import family

    name = printable(index.name)
    note = (f"LLaVA's training scripts build LLaVA models only, and {name} is {family(index.model_type).title} "
            f"({index.model_class}); export for LLaMA-Factory or ms-swift instead")
    text = f"# NOT EXACT: {printable(note)}\n"
    return Export("llava", text, False, note, sum(n for n, on in zip(index.numels, mask) if on), "shell")


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool]) -> Export:
    if not index.model_type.startswith(("llava", "vipllava")):
        return _not_llava(index, mask)
    setting, diff = best(index, mask)
    exact = not diff
    name = printable(index.name)
    script = setting.source.split(" @ ")[0]
    if exact:
        note = f"{script} trains exactly the plan's parameters with these flags ({counts_line(index, mask)})"
    else:
        note = (f"LLaVA's training scripts cannot express this plan on {name} (they choose whole parts); "
                + describe(index, diff, f"the closest setting (below, {script})"))
    head = [f"# {setting.source} flags for the freezelab plan on {name}",
            "# compared by part (vision tower, mm_projector, image_newline, LLM body, lm_head): "
            "LLaVA's own model classes name them differently",
            f"# {'EXACT' if exact else 'NOT EXACT'}: {printable(note)}"]
    flags = setting.flags()
    body = [f"{f} \\" for f in flags[:-1]] + flags[-1:]
    return Export("llava", "\n".join(head + body) + "\n", exact, note, diff.numel(index), "shell")
