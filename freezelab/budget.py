"""What a sanity step or a simulation costs in CPU time on the server, estimated before it runs.

Public mode refuses a run whose estimate is over its limit (`freezelab.policy.Policy`), at once and
with one message that names the limit: the memory estimate alone let through runs that fit in
memory but compute for hours (tiny in bf16 with 262,144 text tokens: 3.55 GiB, hours per step).

A sanity step computes for real, on one CPU thread in public mode (models under
freezelab.step.run.SINGLE_THREAD_PARAMS): its cost is its FLOPs (freezelab.compute.flops, the same
stages as the memory estimate; attention grows with the square of the sequence) at the thread's
throughput in the step's dtype, plus a fixed cost per step for every parameter tensor (Python and
dispatch around each op) and the run's setup (random weights, fingerprints, checks).

A simulation computes nothing (fake tensors), so sequence length costs it nothing: its cost is the
ops it dispatches, which grow with the model's modules (every layer's ops, twice) and with the
images in the batch, since LLaVA carries each image's features as a tensor of its own through the
ops that split, pad and scatter them (any-res models also unpad and tile each image in Python).

CPU seconds, not wall time: on a shared machine a run's wall time is its CPU time divided by the
share of a core it gets. The constants were measured with `python benchmarks/compute_budget.py`
(process CPU time, one thread) on the 2-vCPU machine the README's figures come from: an AMD EPYC
with AVX-512 and AVX-512 BF16 (lscpu: family 25, model 17). Each is the low end of what was
measured (throughputs) or the high end (per-op costs), so an estimate errs long.
"""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.index import ModelIndex
from freezelab.tokens import ANYRES_TYPES
from freezelab.workload import Dtype, Workload

# Matmul-class FLOPs per CPU second of one thread in a sanity step's forward and backward, by the
# parameter dtype. Measured on tiny (full fine-tune), 2,048-8,192 text tokens: fp32 57-77 GFLOP/s,
# bf16 69-99 (AVX-512 BF16 dot products), fp16 13-16 (this CPU has no fp16 arithmetic: every op
# converts).
CPU_FLOPS: dict[Dtype, float] = {Dtype.FP32: 55e9, Dtype.BF16: 65e9, Dtype.FP16: 12e9}
STEP_S_PER_TENSOR = 0.25e-3    # per step and parameter tensor (tiny at 256 tokens: 13 ms for 98 tensors)
RUN_FIXED_S = 0.5              # batch, fingerprints, checks (measured 0.04-0.2 s on tiny)
INIT_S_PER_PARAM = 10e-9       # random weights (normal_ on every parameter)

# A simulation, per the modules it runs (two steps each) and per image in the batch.
SIM_FIXED_S = 0.5              # fake mode, ledger, accounting (tiny without images: 0.2 s in all)
SIM_S_PER_MODULE = 6e-3        # llava-1.5-7b, 724 modules: 3.5-4.2 s with FlopCounterMode counting step 2
                               # (2.5 s without); 13b 828: 3.3 s and OneVision 0.5B 643: 2.1 s without
SIM_S_PER_IMAGE = 1.2e-3       # llava / vipllava: 0.95-1.0 ms per image (tiny, 1,024-16,384 images)
SIM_S_PER_ANYRES_IMAGE = 25e-3  # any-res: llava-v1.6-mistral-7b 23 ms, OneVision 0.5B 8.4 ms per image


@dataclass(frozen=True)
class Cost:
    """A run's estimated CPU time, and what it is made of (for the refusal's message)."""

    seconds: float
    why: str

    def text(self) -> str:
        return f"about {seconds_text(self.seconds)} of CPU time ({self.why})"


def seconds_text(seconds: float) -> str:
    """'0.4 s', '45 s', '12 min', '3.2 h', '41 days'."""
    for div, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= 2 * div:
            return f"{seconds / div:,.{0 if seconds >= 10 * div else 1}f} {unit}"
    return f"{seconds:.{0 if seconds >= 10 else 1}f} s"


def step_flops_or_dense(index: ModelIndex, mask: list[bool], workload: Workload) -> float:
    """The step's FLOPs (freezelab.compute.flops); for a family or workload they do not follow, the
    dense rule: 6 x parameters x tokens (text and image, per sample, times the batch), plus the LLM's
    attention products, 12 x tokens^2 x hidden size x layers per sample (QK^T and AV: 4 s^2 h in
    the forward, twice that in the backward)."""
    from freezelab.compute.flops import FlopsError, step_flops  # the compute model (imports the memory stages)
    from freezelab.tokens import sample_layouts

    try:
        return float(step_flops(index, mask, workload).total)
    except FlopsError:
        tokens = workload.text_tokens + sum(lay.image_tokens for lay in sample_layouts(
            index.config, workload, index.processor))
        text = index.config.get("text_config") or index.config
        attention = 12.0 * tokens**2 * int(text.get("hidden_size", 0)) * len(index.layers.get("llm", ()))
        return workload.batch * (6.0 * index.total_params * tokens + attention)


def step_cost(index: ModelIndex, mask: list[bool], workload: Workload, steps: int) -> Cost:
    """CPU time of `steps` sanity steps of `index` under the trainable `mask` on one thread."""
    flops = step_flops_or_dense(index, mask, workload)
    rate = CPU_FLOPS[Dtype(workload.dtype)]
    per_step = flops / rate + len(index.params) * STEP_S_PER_TENSOR
    seconds = steps * per_step + index.total_params * INIT_S_PER_PARAM + RUN_FIXED_S
    return Cost(seconds, f"{steps} step{'s' if steps != 1 else ''} of {flops / 1e9:,.1f} GFLOP each at "
                         f"{rate / 1e9:.0f} GFLOP/s in {workload.dtype}")


def simulation_cost(index: ModelIndex, workload: Workload) -> Cost:
    """CPU time of a simulated step (two steps on fake tensors) of `index` under `workload`."""
    images = workload.batch * workload.images
    anyres = index.config.get("model_type") in ANYRES_TYPES
    per_image = SIM_S_PER_ANYRES_IMAGE if anyres else SIM_S_PER_IMAGE
    seconds = SIM_FIXED_S + len(index.modules) * SIM_S_PER_MODULE + images * per_image
    return Cost(seconds, f"{len(index.modules):,} modules and {images:,} image{'s' if images != 1 else ''}"
                         f"{' (any-res)' if anyres and images else ''}")
