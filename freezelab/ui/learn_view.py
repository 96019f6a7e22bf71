"""The Learn tab: a guided walk from LLaVA stage 1 to stage 2 to the last N layers, on the tiny model and
on llava-1.5-7b, then LLaVA-1.5's LoRA recipe against stage 2 and QLoRA on a 24 GB card, explaining what
changed after each step with the numbers the estimator computes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from freezelab import charts, units
from freezelab.errors import FreezelabError
from freezelab.memory.result import MemoryEstimate
from freezelab.memory.gpus import fits_table
from freezelab.plan_files import from_text
from freezelab.plans import Plan, preset
from freezelab.session import Session
from freezelab.ui.handlers import App, View, build_view, load_model
from freezelab.workload import Workload

# The calibration workload of shared measurements: one 336px image (576 tokens) + 1,024 text tokens.
BIG_WORKLOAD = Workload(batch=4, text_tokens=1024, images=1, dtype="bf16")
TINY_WORKLOAD = Workload()


@dataclass(frozen=True)
class Lesson:
    number: int
    key: str
    title: str
    model: str
    preset: str
    workload: Workload
    why: str
    plan: str = ""                 # a plan in the text format, instead of the preset
    compare: str | None = None     # a lesson whose numbers this one is set against

    def make_plan(self) -> Plan:
        return from_text(self.plan) if self.plan else preset(self.preset)


_STAGE1 = ("Only the projector trains: it learns to map image features into the LLM's embedding space. "
           "Its gradients and optimizer state are tiny, but the activations are not: to reach the projector, "
           "backpropagation has to run back through the whole frozen LLM, so every LLM layer keeps its "
           "activations. Frozen does not mean free.")
_STAGE2 = ("Now the LLM trains as well. Every LLM parameter gets a gradient, and AdamW keeps two more "
           "values per parameter: gradients and optimizer state now dwarf everything else. The vision "
           "tower stays frozen and, since nothing before it trains, keeps no activations.")
_LAST_N = ("Only the top layers of the LLM train. Their gradients and optimizer state are a small "
           "fraction of stage 2's, and backpropagation stops at the lowest trainable layer, so the layers "
           "below it keep no activations. This is often the cheapest way to adapt the language side.")

_LORA = ("LLaVA-1.5's LoRA recipe (scripts/v1_5/finetune_lora.sh): the projector trains in full, every Linear "
         "layer of the LLM gets a rank-128 adapter (alpha 256), the vision tower stays frozen. A 40th of stage 2's "
         "parameters train, so gradients and AdamW state shrink by about as much (the adapters are fp32: PEFT "
         "upcasts them). The activations do not shrink: each adapted layer keeps its input for the adapter's "
         "gradient even though the frozen Linear beside it keeps nothing, and gradients still flow through every "
         "layer, so activations are now most of the memory.")
_QLORA = ("QLoRA: the frozen LLM weights stored in 4-bit NF4 with double quantization (0.5 byte per weight plus "
          "block constants), rank-64 adapters on every LLM Linear layer, gradient checkpointing and paged 8-bit "
          "AdamW, one sample of 1,024 text tokens. The 4-bit layers are modelled from bitsandbytes (its kernels "
          "need CUDA): every matmul dequantizes its weight into a 16-bit transient.")
_QLORA_PLAN = "quant 4bit\nadapter r=64 alpha=16 dropout=0.05\nlora @llm"
_LORA_PLAN = "adapter r=128 alpha=256\ntrain @projector\nlora @llm"
QLORA_WORKLOAD = Workload(batch=1, text_tokens=1024, images=1, dtype="bf16", grad_ckpt=True,
                          optimizer="paged-adamw-8bit")
CARD_24GB = "RTX 4090 24 GB"  # freezelab.memory.gpus

LESSONS: dict[str, Lesson] = {lesson.key: lesson for lesson in (
    Lesson(1, "tiny-stage1", "Stage 1 on the tiny model", "tiny", "stage1", TINY_WORKLOAD, _STAGE1),
    Lesson(2, "tiny-stage2", "Stage 2 on the tiny model", "tiny", "stage2", TINY_WORKLOAD, _STAGE2),
    Lesson(3, "tiny-last2", "Last 2 LLM layers on the tiny model", "tiny", "last-2", TINY_WORKLOAD, _LAST_N),
    Lesson(4, "7b-stage1", "Stage 1 on llava-1.5-7b", "llava-1.5-7b", "stage1", BIG_WORKLOAD, _STAGE1),
    Lesson(5, "7b-stage2", "Stage 2 on llava-1.5-7b", "llava-1.5-7b", "stage2", BIG_WORKLOAD, _STAGE2),
    Lesson(6, "7b-last4", "Last 4 LLM layers on llava-1.5-7b", "llava-1.5-7b", "last-4", BIG_WORKLOAD, _LAST_N),
    Lesson(7, "7b-lora", "LLaVA-1.5's LoRA recipe against stage 2", "llava-1.5-7b", "", BIG_WORKLOAD, _LORA,
           _LORA_PLAN, "7b-stage2"),
    Lesson(8, "7b-qlora", "QLoRA on a 24 GB card", "llava-1.5-7b", "", QLORA_WORKLOAD, _QLORA, _QLORA_PLAN),
)}

INTRO = ("Each button loads a model, applies a plan and sets a workload; the dashboard tab shows the "
         "result. Read what changed and why below. The 7B steps use batch 4 with one 336px image and "
         "1,024 text tokens per sample, in bf16 with AdamW; the QLoRA step one such sample with gradient "
         "checkpointing and paged 8-bit AdamW.")


def _delta(before: int, after: int) -> str:
    d = (after - before) / 2**30
    return f"{'+' if d >= 0 else '−'}{abs(d):.2f} GiB"


def what_changed(prev: View | None, new: View) -> str:
    """Trainable parameters and memory before -> after, with the categories that moved most."""
    a: MemoryEstimate = new.memory.estimate
    after_train = new.trainable
    if prev is None:
        return (f"Trainable parameters: **{units.params(after_train)}**. Memory per GPU: "
                f"**{units.gib(a.device_estimate_bytes)}**.")
    b: MemoryEstimate = prev.memory.estimate
    before_train = prev.trainable
    categories = set(a.breakdown) | set(b.breakdown)
    moved = sorted(((abs(a.breakdown.get(c, 0) - b.breakdown.get(c, 0)), c) for c in categories), reverse=True)
    parts = [f"{charts.CATEGORY_LABELS.get(c, c)} {_delta(b.breakdown.get(c, 0), a.breakdown.get(c, 0))}"
             for size, c in moved[:3] if size >= 2**20]
    return (f"Trainable parameters: {units.params(before_train)} → **{units.params(after_train)}**. "
            f"Memory per GPU: {units.gib(b.device_estimate_bytes)} → **{units.gib(a.device_estimate_bytes)}**"
            + (f" ({'; '.join(parts)})." if parts else "."))


def run_lesson(app: App, session: Session, key: str) -> tuple[View, str]:
    if key not in LESSONS:
        raise FreezelabError(f"unknown lesson {key!r}; lessons: {', '.join(LESSONS)}")
    lesson = LESSONS[key]
    prev: View | None = None
    if session.model == lesson.model:
        try:
            prev = build_view(app, session)
        except FreezelabError:  # the old plan may not resolve; the lesson replaces it anyway
            prev = None
    else:  # comparing two different models says nothing about the plan: show absolute numbers
        session = load_model(app, session, lesson.model).session
    if lesson.compare is not None:  # set against the lesson it names, whatever ran before
        other = LESSONS[lesson.compare]
        prev = build_view(app, replace(session, workload=other.workload).with_plan(other.make_plan()))
    session = replace(session, workload=lesson.workload).with_plan(lesson.make_plan())
    view = build_view(app, session, f"Lesson {lesson.number} applied ({lesson.title}): the dashboard tab "
                      "shows the result.")
    text = f"### {lesson.number}. {lesson.title}\n\n{lesson.why}\n\n{what_changed(prev, view)}"
    if lesson.key == "7b-qlora":
        row = next(r for r in fits_table(view.memory.estimate) if r["gpu"] == CARD_24GB)
        text += (f" On an {CARD_24GB} card: **{'it fits' if row['fits'] else 'it does not fit'}** "
                 f"({units.gib(abs(row['headroom_bytes']))} {'to spare' if row['fits'] else 'short'}).")
    if view.memory.estimate.notes:
        text += "\n\nWhat the estimator says:\n" + "\n".join(f"- {n}" for n in view.memory.estimate.notes[:4])
    return view, text
