"""What the README claims for the memory estimates, in one place: each method against the measured
steps at hand, and the two methods against each other over the workload grid.

The measured rows: tests/data/calibration-h100.jsonl (11), tests/data/measured-extra-h100.jsonl (26)
and tests/data/validation-h200.jsonl (23), all on sm90. `python benchmarks/memory_accuracy.py --all`
prints the median and maximum |error| of each method's tensor peak (`peak_bytes` against
`peak_allocated_bytes`) and device figure (`device_estimate_bytes` against `device_used_bytes`); a claim
is that printed figure rounded up. `python benchmarks/agreement_grid.py` prints the grid's worst cell.
The tests, the verdict's error band and the benchmarks compare against these figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.memory.result import Method


@dataclass(frozen=True)
class Claim:
    median: float   # of |estimate - measured| / measured
    max: float


# printed: analytic 0.10% / 0.56%, simulated 0.08% / 3.29% (the 7B fp32 + bf16 autocast rows)
TENSOR_PEAK: dict[Method, Claim] = {Method.ANALYTIC: Claim(0.002, 0.007), Method.SIMULATE: Claim(0.001, 0.033)}
# printed: analytic 0.28% / 3.39%, simulated 0.32% / 3.49%; one band for both (the verdict's margin)
DEVICE: dict[Method, Claim] = {Method.ANALYTIC: Claim(0.004, 0.036), Method.SIMULATE: Claim(0.004, 0.036)}
# The two methods against each other on every cell of the grid (freezelab.memory.agreement): the tensor peak
# without the cuBLAS workspaces, on the tiny test models and the shipped configs.
AGREEMENT_MAX = 0.015
