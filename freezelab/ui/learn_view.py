"""The Learn tab: a guided walk from LLaVA stage 1 to stage 2 to the last N layers, then gradient
checkpointing, LLaVA-1.5's LoRA recipe against stage 2, QLoRA on a 24 GB card, and what the plans cost
in compute and time, on llava-1.5-7b, explaining after each step what changed and why.

The lessons use a 7B architecture because memory effects only show at that size (on the tiny model
the CUDA context outweighs every tensor), and its config ships with freezelab, so estimating it
costs nothing. Every number in a lesson's text is computed from the estimate it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from freezelab import charts, units
from freezelab.errors import FreezelabError
from freezelab.memory.gpus import fits_table
from freezelab.memory.result import MemoryEstimate
from freezelab.plan_files import from_text
from freezelab.plans import Plan, preset
from freezelab.session import Session
from freezelab.ui.context_view import workload_text
from freezelab.ui.handlers import App, View, build_view, load_model
from freezelab.ui.learn_compute import compute_lesson
from freezelab.workload import Workload

MODEL = "llava-1.5-7b"
# The calibration workload of the shared measurements: one image + 1,024 text tokens per sample.
WORKLOAD = Workload(batch=4, text_tokens=1024, images=1, dtype="bf16")
Facts = dict[str, str]


@dataclass(frozen=True)
class Lesson:
    number: int
    key: str
    title: str
    preset: str
    workload: Workload
    why: Callable[[Facts], str]   # the explanation, filled in with numbers from the estimate
    plan: str = ""                # a plan in the text format, instead of the preset
    compare: str | None = None    # a lesson whose numbers this one is set against
    compute: bool = False         # also compare the plans' FLOPs and step times (freezelab.ui.learn_compute)

    def make_plan(self) -> Plan:
        return from_text(self.plan) if self.plan else preset(self.preset)


def _stage1(f: Facts) -> str:
    return (f"Only the projector trains: {f['trainable']} parameters. Its AdamW state is small "
            f"({f['optimizer_state']}), but the activations are not: {f['activations']} at the peak, "
            f"{f['llm_activations']} of them kept by the frozen LLM, because backpropagation has to run back "
            "through every LLM layer to reach the projector. Frozen does not mean free.")


def _stage2(f: Facts) -> str:
    return (f"Now the LLM trains as well: {f['trainable']} parameters. AdamW keeps two moments per trainable "
            f"parameter ({f['optimizer_state']}), and the backward pass writes {f['gradients']} of gradients. The "
            f"LLM now also keeps what its own weight gradients need: {f['llm_activations']} of activations. The "
            "vision tower stays frozen and nothing before it trains, so it keeps only "
            f"{f['vision_activations']}.")


def _last_n(f: Facts) -> str:
    return (f"Only the top LLM layers train: {f['trainable']} parameters, so AdamW's state is "
            f"{f['optimizer_state']}. Backpropagation stops at the lowest trainable layer: the layers below it "
            f"keep no activations, and the LLM keeps {f['llm_activations']} in all. This is often the cheapest "
            "way to adapt the language side.")


def _checkpointing(f: Facts) -> str:
    return (f"Stage 2 again, with gradient checkpointing: each decoder layer keeps only its input and runs its "
            f"forward a second time during backward. The LLM's activations drop to {f['llm_activations']}, and "
            f"the peak moves to the {f['phase']} step, where gradients ({f['gradients']}) and AdamW's state "
            f"({f['optimizer_state']}) are what is left.")


def _lora(f: Facts) -> str:
    return (f"LLaVA's LoRA recipe (its finetune_lora script): the projector trains in full and every Linear layer "
            f"of the LLM gets a rank-{f['r']} adapter (alpha {f['alpha']}): {f['trainable']} parameters train, "
            f"{f['adapter_params']} of them in adapters, so AdamW's state is {f['optimizer_state']} (PEFT keeps "
            "adapters in full precision). The activations do not shrink: each adapted layer keeps its input for "
            "the adapter's gradient even though the frozen Linear beside it keeps nothing, and gradients flow "
            f"through every layer, so the LLM keeps {f['llm_activations']}.")


def _qlora(f: Facts) -> str:
    return (f"QLoRA: the LLM's frozen Linear weights stored as NormalFloat codes with double quantization "
            f"({f['quantized']} instead of {f['unquantized']}), rank-{f['r']} adapters on all of them ({f['trainable']} parameters "
            "train), gradient checkpointing, paged AdamW with byte-sized moments and one sample; the LLM keeps "
            f"{f['llm_activations']} of activations. The quantized layers are modelled from bitsandbytes (its "
            "kernels need CUDA): every matmul dequantizes its weight into a transient in the layer's dtype.")


_LORA_PLAN = "adapter r=128 alpha=256\ntrain @projector\nlora @llm"
_QLORA_PLAN = "quant 4bit\nadapter r=64 alpha=16 dropout=0.05\nlora @llm"
QLORA_WORKLOAD = Workload(batch=1, text_tokens=1024, images=1, dtype="bf16", grad_ckpt=True,
                          optimizer="paged-adamw-8bit")
CARD_24GB = "RTX 4090 24 GB"  # freezelab.memory.gpus

def _compute(f: Facts) -> str:
    return (f"Back to stage 1 ({f['trainable']} trainable parameters), this time for what the plans cost in "
            "compute. Freezing changes memory far more than compute: every plan runs the same forward, and what "
            "differs is the backward. A frozen layer behind a trainable one still runs its backward for the input "
            "gradient and skips only the weight-gradient matmuls (which is also why the frozen LLM keeps "
            f"{f['llm_activations']} of activations); only layers before the first trainable parameter run no "
            "backward at all.")


LESSONS: dict[str, Lesson] = {lesson.key: lesson for lesson in (
    Lesson(1, "stage1", "Stage 1: the projector", "stage1", WORKLOAD, _stage1),
    Lesson(2, "stage2", "Stage 2: projector + LLM", "stage2", WORKLOAD, _stage2),
    Lesson(3, "last4", "The last 4 LLM layers", "last-4", WORKLOAD, _last_n),
    Lesson(4, "stage2-ckpt", "Stage 2 + checkpointing", "stage2", WORKLOAD.with_(grad_ckpt=True),
           _checkpointing),
    Lesson(5, "lora", "LoRA against stage 2", "", WORKLOAD, _lora, _LORA_PLAN, "stage2"),
    Lesson(6, "qlora", "QLoRA on a 24 GB card", "", QLORA_WORKLOAD, _qlora, _QLORA_PLAN),
    Lesson(7, "compute", "Stage 1 vs stage 2 in FLOPs and time", "stage1", WORKLOAD, _compute, compute=True),
)}

INTRO = (f"Each button loads {MODEL} (its architecture only: nothing is downloaded), applies a plan and sets "
         f"the workload to {workload_text(WORKLOAD)}; the Plan & memory tab shows the result. Read what "
         "changed and why below.")


def facts(view: View) -> Facts:
    """The numbers a lesson's text quotes, from the view's own estimate (units chosen per number)."""
    est = view.memory.estimate
    acts = est.activations_by_component
    adapters = est.details.get("adapters") or {}
    return {"trainable": units.params(view.trainable), "phase": est.phase,
            "optimizer_state": units.nbytes(est.breakdown.get("optimizer_state", 0)),
            "activations": units.nbytes(est.breakdown.get("activations", 0)),
            "gradients": units.nbytes(est.details.get("gradients_total_bytes", 0)),
            "llm_activations": units.nbytes(acts.get("llm", 0)),
            "adapter_params": units.params(adapters.get("params", 0)),
            "quantized": units.nbytes(adapters.get("quantized_bytes", 0)),
            "unquantized": units.nbytes(adapters.get("quantized_dense_bytes", 0)),
            "r": str(view.session.plan.lora.r), "alpha": f"{view.session.plan.lora.alpha:g}",
            "vision_activations": units.nbytes(acts.get("vision", 0))}


def _delta(before: int, after: int) -> str:
    sign = "+" if after >= before else "−"
    return f"{sign}{units.nbytes(abs(after - before))}"


def what_changed(prev: View | None, new: View) -> str:
    """Trainable parameters and memory before -> after, with the categories that moved most."""
    a: MemoryEstimate = new.memory.estimate
    if prev is None:
        return (f"Trainable parameters: **{units.params(new.trainable)}**. Memory per GPU: "
                f"**{units.gib(a.device_estimate_bytes)}** ({units.gib(a.peak_bytes)} of it tensors).")
    b: MemoryEstimate = prev.memory.estimate
    categories = set(a.breakdown) | set(b.breakdown)
    moved = sorted(((abs(a.breakdown.get(c, 0) - b.breakdown.get(c, 0)), c) for c in categories), reverse=True)
    parts = [f"{charts.CATEGORY_LABELS.get(c, c)} {_delta(b.breakdown.get(c, 0), a.breakdown.get(c, 0))}"
             for size, c in moved[:3] if size >= 2**20]
    return (f"Trainable parameters: {units.params(prev.trainable)} → **{units.params(new.trainable)}**. "
            f"Memory per GPU: {units.gib(b.device_estimate_bytes)} → **{units.gib(a.device_estimate_bytes)}**"
            + (f" ({'; '.join(parts)})." if parts else "."))


def run_lesson(app: App, session: Session, key: str) -> tuple[View, str]:
    if key not in LESSONS:
        raise FreezelabError(f"unknown lesson {key!r}; lessons: {', '.join(LESSONS)}")
    lesson = LESSONS[key]
    prev: View | None = None
    if session.model == MODEL:
        try:
            prev = build_view(app, session)
        except FreezelabError:  # the old plan may not resolve; the lesson replaces it anyway
            prev = None
    else:  # comparing two different models says nothing about the plan: show absolute numbers
        session = load_model(app, session, MODEL).session
    if lesson.compare is not None:  # set against the lesson it names, whatever ran before
        other = LESSONS[lesson.compare]
        prev = build_view(app, replace(session, workload=other.workload, context=None).with_plan(other.make_plan()))
    session = replace(session, workload=lesson.workload, context=None).with_plan(lesson.make_plan())
    view = build_view(app, session, f"Lesson {lesson.number} applied ({lesson.title}): the Plan & memory tab "
                      "shows the result.")
    text = f"### {lesson.number}. {lesson.title}\n\n{lesson.why(facts(view))}\n\n{what_changed(prev, view)}"
    if lesson.key == "qlora":
        row = next(r for r in fits_table(view.memory.estimate) if r["gpu"] == CARD_24GB)
        text += (f" On an {CARD_24GB} card: **{'it fits' if row['fits'] else 'it does not fit'}** "
                 f"({units.gib(abs(row['headroom_bytes']))} {'to spare' if row['fits'] else 'short'}).")
    text += "\n\nThe estimator's own account is under *Why the memory goes where it goes* on the Plan & memory tab."
    if lesson.compute:
        text += "\n\n" + compute_lesson(app.loaded(session).index, lesson.workload, session.efficiency)
    return view, text
