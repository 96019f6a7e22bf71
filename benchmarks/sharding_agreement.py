"""The analytic estimate against the simulated one for sharded runs: every sharding mode, plans,
gradient checkpointing and GPU counts from 1 to 64, on llava-1.5-7b, llava-v1.6-34b and
llava-onevision-qwen2-72b.

    python benchmarks/sharding_agreement.py [--models M ...] [--full-grid] [--json OUT]

For each case it runs `simulate_step` (one rank of an N-GPU step on fake tensors: FSDP2 itself on torch's
fake process group for ZeRO-2, ZeRO-3 and FSDP; the unsharded step with the ledger's scaling for DDP and
ZeRO-1) and the analytic estimate, and prints both peaks, the relative difference and the simulation's
seconds; then the median and largest absolute difference, per model and overall.

The grid: modes {ddp, zero1, zero2, zero3, fsdp} x plans {stage1, stage2, last-4, full} x checkpointing
{off, on} x GPUs {1, 2, 8, 64} x optimizer offload {no, yes} (1 GPU: no sharding, once per plan and
checkpointing setting). On llava-1.5-7b the whole grid runs with `--full-grid` (248 simulations, 10 to
40 s each on two cores). By default, and always on the 34B and 72B models, it is sampled: every mode at
every GPU count, with the plan and checkpointing setting rotating through the cases (so that every plan
and both settings meet every mode and every GPU count), each mode once more with optimizer offload on
8 GPUs, and the 1-GPU run of each plan: 24 cases per model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.memory.analytic import estimate  # noqa: E402
from freezelab.memory.simulate import simulate_step  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.plans import preset, resolve  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.units import GiB  # noqa: E402
from freezelab.workload import Workload  # noqa: E402

MODELS = ("llava-1.5-7b", "llava-v1.6-34b", "llava-onevision-qwen2-72b")
MODES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
PLANS = ("stage1", "stage2", "last-4", "full")
GPUS = (2, 8, 64)
WORKLOAD = dict(batch=4, text_tokens=448)   # the done-when workload of the 7B case


def full_grid() -> list[tuple[str, bool, str, int, bool]]:
    one = [(p, c, "ddp", 1, False) for p in PLANS for c in (False, True)]
    return one + [(p, c, m, g, o) for p, c, m, g, o in itertools.product(PLANS, (False, True), MODES, GPUS,
                                                                        (False, True))]


def sampled_grid() -> list[tuple[str, bool, str, int, bool]]:
    """Each mode at each GPU count once; plan and checkpointing rotate so that every plan and both
    settings meet every mode and every GPU count; then each mode once more with optimizer offload."""
    cases = [(p, False, "ddp", 1, False) for p in PLANS]
    settings = list(itertools.product(PLANS, (False, True)))
    for k, (m, g) in enumerate(itertools.product(MODES, GPUS)):
        plan, ckpt = settings[(k * 3) % len(settings)]
        cases.append((plan, ckpt, m, g, False))
    for k, m in enumerate(MODES):
        plan, ckpt = settings[(k * 5 + 1) % len(settings)]
        cases.append((plan, ckpt, m, 8, True))
    return cases


def run_case(model: str, plan: str, ckpt: bool, mode: str, gpus: int, offload: bool) -> dict:
    source = resolve_source(model)
    index = index_of(source)
    res = resolve(preset(plan), index)
    w = Workload(grad_ckpt=ckpt, gpus=gpus, sharding=mode, offload_optimizer=offload, **WORKLOAD)
    analytic = estimate(index, res.mask, w).peak_bytes
    t0 = time.perf_counter()
    simulated = simulate_step(hf_config(source), res.trainable_names(index), w).peak_bytes
    seconds = time.perf_counter() - t0
    return dict(model=model, plan=plan, ckpt=ckpt, mode=mode, gpus=gpus, offload=offload, analytic_bytes=analytic,
                simulated_bytes=simulated, error=(analytic - simulated) / simulated, seconds=seconds)


def summary(rows: list[dict]) -> str:
    errs = [abs(r["error"]) for r in rows]
    return f"{len(rows)} cases: median {statistics.median(errs):.2%}, max {max(errs):.2%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--full-grid", action="store_true", help="the whole grid on llava-1.5-7b")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    rows = []
    print(f"{'model':28} {'plan':7} {'ckpt':4} {'mode':5} {'GPUs':>4} {'offload':7} {'analytic':>9} "
          f"{'simulated':>9} {'diff':>7} {'sim s':>6}", flush=True)
    for model in args.models:
        grid = full_grid() if args.full_grid and model == MODELS[0] else sampled_grid()
        for plan, ckpt, mode, gpus, offload in grid:
            r = run_case(model, plan, ckpt, mode, gpus, offload)
            rows.append(r)
            print(f"{model:28} {plan:7} {'on' if ckpt else 'off':4} {mode:5} {gpus:>4} {'yes' if offload else 'no':7} "
                  f"{r['analytic_bytes'] / GiB:9.2f} {r['simulated_bytes'] / GiB:9.2f} {r['error']:+7.2%} "
                  f"{r['seconds']:6.1f}", flush=True)
        print(f"{model}: {summary([r for r in rows if r['model'] == model])}", flush=True)
    print(f"all: {summary(rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
