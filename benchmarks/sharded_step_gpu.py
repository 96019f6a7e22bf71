"""Measure each rank's memory of a sharded training step on real GPUs, beside the per-GPU estimate
(needs N CUDA GPUs on one node; not run on this project's CPU-only machines).

The measurement is the sanity step itself, with the protocol of the calibration rows
(../shared/calibration/measure.py, benchmarks/measure_gpu.py): random weights, the plan applied, the
optimizer made before step 1, two steps of forward with labels, backward, optimizer.step(),
zero_grad(set_to_none=True), and the peak of step 2 as `torch.cuda.max_memory_allocated()`, on every
rank. One command does it (rank 0 prints the JSON report with every rank's peak):

    torchrun --nproc_per_node 8 -m freezelab step llava-1.5-7b --preset stage2 --batch 4 \\
        --text-tokens 448 --device cuda --sharding fsdp --json > ranks.json

This script runs that command for a model, plan and workload and prints, per rank, the measured peak
(allocated and reserved) against the estimate; with `--baseline` it also runs the plain one-GPU step
(`python -m freezelab step ... --device cuda`) and, for `--gpus 1`, shows FSDP2's own overhead at world
size 1 (its all-gather buffers beside the unsharded weights).

    python benchmarks/sharded_step_gpu.py [--gpus N] [--sharding fsdp|ddp] [--baseline] [-- STEP ARGUMENTS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["llava-1.5-7b", "--preset", "stage2", "--batch", "4", "--text-tokens", "448"]
GiB = 2**30


def _report(cmd: list[str]) -> dict:
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if not run.stdout.strip():
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--sharding", choices=("fsdp", "ddp"), default="fsdp")
    ap.add_argument("--baseline", action="store_true", help="also run the plain one-GPU step")
    ap.add_argument("step_args", nargs="*", help="after --: the step command's model, plan and workload")
    args = ap.parse_args()
    step = args.step_args or DEFAULT
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus), "-m", "freezelab",
           "step", *step, "--device", "cuda", "--sharding", args.sharding, "--json"]
    print(" ".join(cmd[2:]))
    data = _report(cmd)
    print(f"{'rank':>4} {'device':24} {'allocated GiB':>13} {'reserved GiB':>12} {'estimate GiB':>12} {'error':>7}")
    for r in data["distributed"]["ranks"]:
        err = "-" if r["relative_error"] is None else f"{r['relative_error']:+.2%}"
        print(f"{r['rank']:>4} {r['device_name'][:24]:24} {_gib(r['peak_allocated_bytes']):>13} "
              f"{_gib(r['peak_reserved_bytes']):>12} {_gib(r['estimate_bytes']):>12} {err:>7}")
    print("checks passed on every rank" if data["passed"] else "a check FAILED: see the report")
    if args.baseline:
        plain = _report([sys.executable, "-m", "freezelab", "step", *step, "--device", "cuda", "--json"])
        peak = max(s["peak_allocated_bytes"] for s in plain["steps"] if s["steady"])
        rank0 = data["distributed"]["ranks"][0]["peak_allocated_bytes"]
        print(f"plain one-GPU step: {_gib(peak)} GiB; rank 0 under {args.sharding} on {args.gpus} GPU(s): "
              f"{_gib(rank0)} GiB ({(rank0 - peak) / peak:+.2%})")


if __name__ == "__main__":
    main()
