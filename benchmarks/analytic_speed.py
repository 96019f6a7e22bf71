"""Speed of the analytic memory estimate (target: under 20 ms for a 7B plan) and of the FLOPs
count and step times beside it.

    python benchmarks/analytic_speed.py [--runs 50]

Times `freezelab.memory.analytic.estimate(index, mask, workload)` for a new step (the built step
and the allocator replay's figures are cleared before each call, `memory.step_memo` and
`memory.replay_memo`; the layer stages stay kept, `memory.layer_memo`, as in an index in use), again
for a step already estimated (both kept: what a second look at the same step costs), and
`freezelab.compute.flops.step_flops` followed by the step time on every common GPU
(`freezelab.compute.timing.step_times`) of that estimated step (its built stages kept, as the
dashboard counts them after the estimate) with the index already loaded (as the UI and CLI hold it)
for several models, plans and workloads, and prints the median and the slowest of `--runs` calls each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.compute.flops import flops_followed, step_flops  # noqa: E402
from freezelab.compute.timing import step_times  # noqa: E402
from freezelab.memory import replay_memo, step_memo  # noqa: E402
from freezelab.memory.analytic import estimate  # noqa: E402
from freezelab.models import index_of  # noqa: E402
from freezelab.plans import preset  # noqa: E402
from freezelab.plans import resolve as resolve_plan  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.workload import Workload  # noqa: E402

CASES = (
    ("llava-1.5-7b", "stage2", Workload(batch=4, text_tokens=448)),
    ("llava-1.5-7b", "full", Workload(batch=16, text_tokens=1024, grad_ckpt=True)),
    ("llava-1.5-7b", "last-4", Workload(batch=2, text_tokens=448, dtype="fp32", autocast="bf16")),
    ("llava-v1.6-mistral-7b", "stage1", Workload(batch=4, text_tokens=512, image_size=672)),
    ("llava-onevision-qwen2-72b", "full", Workload(batch=1, text_tokens=512, gpus=8, sharding="zero3")),
    ("qwen2.5-vl-7b-instruct", "stage2", Workload(batch=4, text_tokens=512, image_sizes=((448, 672),))),
    ("gemma-3-12b-it", "last-4", Workload(batch=4, text_tokens=512, image_sizes=((600, 800),))),
    ("mistral-small-3.1-24b-instruct-2503", "full", Workload(batch=1, text_tokens=512, image_sizes=((1540, 1540),),
                                                            gpus=8, sharding="zero3")),
)


def _timed(call, runs: int, before=None) -> str:
    call()  # warm the index's cached lookups
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return f"{1e3 * statistics.median(times):7.2f}ms {1e3 * max(times):7.2f}ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    print(f"{'model':36s} {'plan':8s} {'memory: median':>14s} {'max':>9s} {'kept replay':>12s} {'max':>9s} "
          f"{'FLOPs + step times':>19s} {'max':>9s}")
    for name, plan_name, workload in CASES:
        index = index_of(resolve_source(name))
        mask = resolve_plan(preset(plan_name), index).mask
        memory = _timed(lambda: estimate(index, mask, workload), args.runs,
                        before=lambda: (replay_memo.forget(index), step_memo.forget(index)))
        kept = _timed(lambda: estimate(index, mask, workload), args.runs)
        compute = (_timed(lambda: step_times(step_flops(index, mask, workload), workload), args.runs)
                   if flops_followed(index, workload) is None else "not modelled")
        print(f"{name:36s} {plan_name:8s} {memory:>24s} {kept:>22s} {compute:>29s}")


if __name__ == "__main__":
    main()
