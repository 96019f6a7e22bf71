"""The sanity step's checks of adapters, on what the runner observed (pure Python, as freezelab.checks).

PEFT starts every LoRA B at zero (`init_lora_weights=True`), so the adapter changes nothing at first and
A's gradient, which flows through B, is exactly zero in step 1 while B's is not; after one optimizer step
B has moved and A's gradient is non-zero. `adapter_start` checks exactly that (with one step, only the
first half can be seen). `merge_matches` checks that PEFT's `merge_and_unload()` folds the trained adapters
into the base weights without changing the model's output beyond the rounding of the weight dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.checks import Check, Observation, _check
from freezelab.components import Part
from freezelab.index import ModelIndex
from freezelab.workload import Dtype

# Largest |adapted - merged| logit over the largest |logit| (at least 1) a merge may leave: fp32 rounding;
# the 16-bit base weights rounded once more when W + s*BA is stored (bf16 keeps 8 bits of mantissa); a
# quantized base merged and quantized again (PEFT warns that this changes outputs), judged as a warning.
MERGE_TOLERANCE = {Dtype.FP32: 1e-4, Dtype.FP16: 1e-2, Dtype.BF16: 4e-2}
QUANTIZED_MERGE_TOLERANCE = 0.25


@dataclass(frozen=True)
class Merge:
    """What merging changed: largest |adapted - merged| logit and largest |adapted| logit."""

    max_diff: float
    max_logit: float
    tolerance: float
    quantized: bool = False


def lora_a(index: ModelIndex) -> list[int]:
    """The LoRA A tensors of an adapted index."""
    return [i for i, p in enumerate(index.params) if p.part == Part.ADAPTER and ".lora_A." in p.name]


def first_step_zero(index: ModelIndex, obs: Observation) -> set[int]:
    """Tensors whose step-1 gradient is exactly zero by design (LoRA A)."""
    return set(lora_a(index)) if obs.norms else set()


def adapter_start(index: ModelIndex, obs: Observation, dead: dict[str, str]) -> Check:
    reachable = [i for i in lora_a(index) if index.params[i].name not in dead]
    first = [i for i in reachable if obs.norms and obs.norms[0][i] not in (None, 0.0)]
    later = [i for i in reachable if any(step[i] == 0.0 for step in obs.norms[1:])]
    steps = len(obs.norms)
    if not first and not later:
        after = " and non-zero after it" if steps > 1 else " (one step shows no more: B moves in its optimizer step)"
        return Check("adapter_start", True, "failure",
                     f"all {len(reachable)} lora_A gradients are exactly zero in step 1, as lora_B starts at zero{after}")
    bad = first + later
    causes = {**{i: "non-zero gradient in step 1: lora_B did not start at zero" for i in first},
              **{i: "zero gradient after step 1: lora_B did not move, so A learns nothing" for i in later}}
    return _check("adapter_start", "failure", index, bad, "", f"{len(bad)} lora_A tensors break LoRA's start "
                  "(A's gradient exactly zero in step 1 only, because B starts at zero)", causes)


def merge_matches(index: ModelIndex, merge: Merge) -> Check:
    scale = max(1.0, merge.max_logit)
    ok = merge.max_diff <= merge.tolerance * scale
    level = "warning" if merge.quantized else "failure"
    detail = (f"largest logit difference {merge.max_diff:.3g} against logits up to {merge.max_logit:.3g} "
              f"(tolerance {merge.tolerance:g} of max(1, |logit|))")
    if ok:
        return Check("merge_matches", True, level, f"merge_and_unload() reproduces the adapted output: {detail}")
    why = " (a quantized base is merged by dequantizing and quantizing again)" if merge.quantized else ""
    return Check("merge_matches", False, level, f"merging the adapters changes the output{why}: {detail}")
