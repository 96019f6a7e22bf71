"""Calibrate and check public mode's CPU budget (freezelab.budget) on this machine.

    python benchmarks/compute_budget.py [--runs 3] [--quick]

Sanity steps: tiny on one thread (as public mode runs it), full fine-tune, at several sequence
lengths and dtypes. The CPU time of one step is (CPU of a 3-step run - CPU of a 1-step run) / 2, so
setup is left out; its throughput is the step's FLOPs (freezelab.compute.flops) over that time,
printed beside budget.CPU_FLOPS. Simulations: process CPU time of `simulate_step` for models of
different sizes and for batches of many images, beside budget.simulation_cost. Each figure is the
median of --runs runs; the last column is the estimate over the measurement (above 1: the estimate
errs long, as it should).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.budget import CPU_FLOPS, simulation_cost, step_cost  # noqa: E402
from freezelab.compute.flops import step_flops  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.plans import preset, resolve  # noqa: E402
from freezelab.reclaim import reclaim  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.workload import Workload  # noqa: E402

STEPS = [(2048, "fp32"), (8192, "fp32"), (2048, "bf16"), (8192, "bf16"), (2048, "fp16")]
SIMULATIONS = [("tiny", Workload(batch=1)), ("tiny", Workload(batch=256, images=16)),
               ("llava-1.5-7b", Workload(batch=1)), ("llava-1.5-7b", Workload(batch=8, images=2)),
               ("llava-v1.6-mistral-7b", Workload(batch=8))]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_of(fn: Callable[[], object]) -> float:
    before = cpu()
    fn()
    return cpu() - before


def lscpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line for line in lines if line.startswith("flags")).split()
        return f"{name}; avx512f {'avx512f' in flags}, avx512_bf16 {'avx512_bf16' in flags}"
    except (OSError, StopIteration):
        return platform.processor()


def steps(runs: int, cases: list[tuple[int, str]]) -> None:
    from freezelab.step import run_step

    source = resolve_source("tiny")
    index = index_of(source)
    plan = preset("full")
    mask = resolve(plan, index).mask
    run_step(source, plan, Workload(), steps=1)  # imports and first-use costs
    print("sanity step on tiny (one thread), full fine-tune: per step CPU s, GFLOP/s, and the budget's estimate / measured")
    for tokens, dtype in cases:
        w = Workload(text_tokens=tokens, dtype=dtype)
        per_step, threes = [], []
        for _ in range(runs):
            one = cpu_of(lambda: run_step(source, plan, w, steps=1))
            threes.append(cpu_of(lambda: run_step(source, plan, w, steps=3)))
            per_step.append((threes[-1] - one) / 2)
            reclaim()
        measured, total = statistics.median(per_step), statistics.median(threes)
        flops = step_flops(index, mask, w).total
        estimate = step_cost(index, mask, w, 3).seconds
        print(f"  {tokens:>6} tokens {dtype}: {measured:.2f} s per step, {flops / 1e9:,.1f} GFLOP, "
              f"{flops / measured / 1e9:.0f} GFLOP/s (budget assumes {CPU_FLOPS[w.dtype] / 1e9:.0f}); "
              f"3 steps estimated {estimate:.1f} s, measured {total:.1f} s, ratio {estimate / total:.2f}")


def simulations(runs: int, cases: list[tuple[str, Workload]]) -> None:
    from freezelab.memory.simulate import simulate_step

    print("simulated step: process CPU s, and the budget's estimate / measured")
    for model, w in cases:
        source = resolve_source(model)
        index = index_of(source)
        names = resolve(preset("stage2"), index).trainable_names(index)
        config = hf_config(source)
        simulate_step(config, names, Workload(batch=1))  # imports, first-use costs
        reclaim()
        times = []
        for _ in range(runs):
            times.append(cpu_of(lambda: simulate_step(config, names, w)))
            reclaim()
        measured = statistics.median(times)
        estimate = simulation_cost(index, w)
        print(f"  {model} batch {w.batch} x {w.images} image(s): {measured:.2f} s ({estimate.why}); "
              f"estimated {estimate.seconds:.2f} s, ratio {estimate.seconds / measured:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="two step cases and two simulations")
    args = p.parse_args()
    print(f"CPU: {lscpu()}")
    steps(args.runs, STEPS[::2] if args.quick else STEPS)
    simulations(args.runs, SIMULATIONS[1:3] if args.quick else SIMULATIONS)


if __name__ == "__main__":
    main()
