"""The Learn tab's compute lesson: stage 1 against stage 2 against a full fine-tune in FLOPs and
step time, every number computed for the model and workload at hand."""

from __future__ import annotations

from freezelab import units
from freezelab.anatomy import count
from freezelab.compute.flops import Flops, step_flops
from freezelab.compute.timing import Efficiency, step_time
from freezelab.index import ModelIndex
from freezelab.memory.gpus import GPUS
from freezelab.plans import preset, resolve
from freezelab.workload import Workload

# The plans compared, cheapest first; a LoRA plan joins this list when adapters exist.
COMPUTE_PLANS = ("stage1", "stage2", "full")
REFERENCE_GPU = "H100 80 GB"
TITLES = {"stage1": "stage 1 (projector)", "stage2": "stage 2 (projector + LLM)", "full": "full fine-tune"}


def _rows(index: ModelIndex, workload: Workload, eff: Efficiency) -> list[tuple[str, int, Flops, float]]:
    gpu = next(g for g in GPUS if g.name == REFERENCE_GPU)
    rows = []
    for name in COMPUTE_PLANS:
        mask = resolve(preset(name), index).mask
        flops = step_flops(index, mask, workload)
        rows.append((name, count(index, mask).trainable, flops, step_time(flops, gpu, workload, eff).seconds))
    return rows


def compute_lesson(index: ModelIndex, workload: Workload, eff: Efficiency) -> str:
    """A table of the plans' FLOPs and step times, and why freezing saves less compute than memory."""
    rows = _rows(index, workload, eff)
    tera = 1e12
    lines = [f"| plan | trains | forward | backward: input grads | backward: weight grads | total | step on one "
             f"{REFERENCE_GPU} |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, trainable, f, seconds in rows:
        s = f.split
        lines.append(f"| {TITLES.get(name, name)} | {units.params(trainable)} | {s.forward / tera:.1f} | "
                     f"{s.backward_input / tera:.1f} | {s.backward_weight / tera:.1f} | **{f.counted / tera:.1f}** | "
                     f"{units.duration(seconds)} |")
    (_, p1, f1, t1), (_, p2, f2, t2) = rows[0], rows[1]
    why = (f"Stage 1 trains {p2 / p1:.0f}× fewer parameters than stage 2 but runs {f1.counted / f2.counted:.0%} of "
           f"its FLOPs and {t1 / t2:.0%} of its step time, not a hundredth. Its forward is the same "
           f"({f1.forward / tera:.1f} TFLOP), and to reach the projector the backward still runs through every frozen "
           f"LLM layer for the input gradients ({f1.split.backward_input / tera:.1f} TFLOP, about one more forward). "
           f"Freezing the LLM saves only its weight gradients ({f2.split.backward_weight / tera:.1f} TFLOP): stage 1 "
           f"costs {f1.counted / f1.forward:.1f} forwards per step, stage 2 {f2.counted / f2.forward:.1f}. Most of what freezing saves is memory (no "
           "gradients or optimizer state for frozen weights), not compute.")
    return ("FLOPs per step (TFLOP, as FlopCounterMode counts them) and the estimated step time:\n\n"
            + "\n".join(lines) + "\n\n" + why)
