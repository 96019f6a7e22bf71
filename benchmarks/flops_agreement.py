"""Analytic FLOPs against FlopCounterMode on the simulated step, for the shipped configs.

    python benchmarks/flops_agreement.py [--models NAME ...] [--presets P ...] [--quick]
    python benchmarks/flops_agreement.py --families [--presets P ...]
    python benchmarks/flops_agreement.py --overhead [--runs 3]

For each shipped config (assets/configs: the LLaVA classes and the families beyond them), each preset and
gradient checkpointing off and on, the analytic count (freezelab.compute.flops.step_flops) is compared with what
torch.utils.flop_counter.FlopCounterMode counts over step 2 of the simulated training step
(freezelab.memory.simulate): forward, backward (recomputed forwards included) and total. The
workload is the CLI's default: batch 1, one image (at each family's default size), 64 text tokens,
bf16, AdamW, SDPA.

The LLaVA grid (the default) is 176 simulated steps, about an hour on two busy CPU cores (those of
llava-v1.6-34b and llava-onevision-qwen2-72b take about a minute each); --quick runs only stage1
and full on those two. --families runs the smallest shipped config of each family beyond LLaVA
(FAMILY_SAMPLE; pass --models for others).

--overhead times the simulation of llava-1.5-7b (stage1, stage2, last-4) with and without the
FlopCounterMode count, alternating, in CPU seconds of this process (less sensitive than wall time
to other jobs on the cores), and prints the medians and the median ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.compute.flops import step_flops  # noqa: E402
from freezelab.memory.simulate import simulate_step  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.plans import preset, resolve  # noqa: E402
from freezelab.sources import known_names  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.tokens import LLAVA_TYPES  # noqa: E402
from freezelab.workload import Workload  # noqa: E402

PRESETS = ("stage1", "stage2", "full", "llm", "vision-projector", "last-4", "lm-head", "frozen")
LARGE = ("llava-v1.6-34b", "llava-onevision-qwen2-72b")
LARGE_SAMPLE = ("stage1", "full")
FAMILY_SAMPLE = ("qwen2.5-vl-3b-instruct", "qwen2-vl-2b-instruct", "gemma-3-4b-it", "paligemma2-3b-pt-224",
                 "internvl3-1b-hf", "mistral-small-3.1-24b-instruct-2503", "smolvlm-256m-instruct",
                 "smolvlm2-2.2b-instruct", "qwen3-vl-2b-instruct")
TOLERANCE = 0.01


def _llava(name: str) -> bool:
    return index_of(resolve_source(name)).model_type in LLAVA_TYPES


def _rel(a: int, b: int) -> float:
    return 0.0 if a == b else abs(a - b) / max(abs(b), 1)


def run(model: str, presets: tuple[str, ...]) -> list[float]:
    source = resolve_source(model)
    index, config = index_of(source), hf_config(source)
    worst = []
    for name in presets:
        res = resolve(preset(name), index)
        for ckpt in (False, True):
            w = Workload(grad_ckpt=ckpt)
            analytic = step_flops(index, res.mask, w)
            t0 = time.perf_counter()
            sim = simulate_step(config, res.trainable_names(index), w, processor=index.processor).details["flops"]
            took = time.perf_counter() - t0
            rel = max(_rel(analytic.forward, sim["forward"]), _rel(analytic.backward, sim["backward"]),
                      _rel(analytic.counted, sim["total"]))
            worst.append(rel)
            print(f"{model:<28} {name:<17} {'ckpt' if ckpt else '    '} analytic {analytic.forward / 1e12:9.3f} + "
                  f"{analytic.backward / 1e12:9.3f} TFLOP  FlopCounterMode {sim['forward'] / 1e12:9.3f} + "
                  f"{sim['backward'] / 1e12:9.3f}  max rel. diff {rel:.2e}  ({took:.0f} s)", flush=True)
    return worst


def overhead(runs: int) -> None:
    source = resolve_source("llava-1.5-7b")
    index, config = index_of(source), hf_config(source)
    times: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    for name in ("stage1", "stage2", "last-4"):
        trainable = resolve(preset(name), index).trainable_names(index)
        simulate_step(config, trainable, Workload(), count_flops=False)  # warm
        for _ in range(runs):
            took = {}
            for count in (True, False):
                t0 = time.process_time()
                simulate_step(config, trainable, Workload(), count_flops=count)
                took[count] = time.process_time() - t0
                times[count].append(took[count])
            ratios.append(took[True] / took[False])
    print(f"simulated step of llava-1.5-7b, CPU seconds: with FlopCounterMode {statistics.median(times[True]):.2f}, "
          f"without {statistics.median(times[False]):.2f} (median of {len(ratios)} each); median ratio "
          f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None, help="default: the LLaVA configs (or with --families, "
                   "FAMILY_SAMPLE)")
    p.add_argument("--families", action="store_true", help="the smallest shipped config of each family beyond LLaVA")
    p.add_argument("--presets", nargs="*", default=list(PRESETS))
    p.add_argument("--quick", action="store_true", help="only stage1 and full on the 34B and 72B models")
    p.add_argument("--overhead", action="store_true", help="time the simulation with and without counting")
    p.add_argument("--runs", type=int, default=3, help="with --overhead: runs per plan")
    args = p.parse_args(argv)
    if args.overhead:
        overhead(args.runs)
        return 0
    models = args.models or (list(FAMILY_SAMPLE) if args.families else
                             [n for n in known_names() if n != "tiny" and _llava(n)])
    worst: list[float] = []
    for model in models:
        presets = tuple(args.presets)
        if model in LARGE and args.quick:
            presets = tuple(x for x in presets if x in LARGE_SAMPLE)
        worst += run(model, presets)
    print(f"\n{len(worst)} steps: largest relative difference {max(worst):.2e} (target: within {TOLERANCE:.0%}); "
          f"{sum(w == 0 for w in worst)} exactly equal")
    return 0 if max(worst) <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
