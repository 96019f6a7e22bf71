"""How long the simulated estimate of one rank of a sharded step takes, as a whole command, and how far it
lands from the analytic figure.

    python benchmarks/sharded_simulate_speed.py [--repeat 3] [-- ESTIMATE ARGUMENTS]

Runs `python -m freezelab estimate ... --method simulate --json` (by default llava-1.5-7b, LLaVA stage 2,
batch 4 x 448 text tokens, 8 GPUs under ZeRO-3) `--repeat` times as a subprocess, and the same command
with the analytic method once; prints each run's wall time, the median, and the simulated peak against
the analytic one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["llava-1.5-7b", "--preset", "stage2", "--batch", "4", "--text-tokens", "448", "--gpus", "8",
           "--sharding", "zero3"]


def run(args: list[str], method: str) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "freezelab", "estimate", *args, "--method", method, "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("estimate_args", nargs="*", help="after --: the estimate command's arguments")
    args = ap.parse_args()
    est_args = args.estimate_args or DEFAULT
    print("python -m freezelab estimate " + " ".join(est_args) + " --method simulate --json")
    analytic, _ = run(est_args, "analytic")
    times = []
    for k in range(args.repeat):
        simulated, seconds = run(est_args, "simulate")
        times.append(seconds)
        print(f"run {k + 1}: {seconds:.1f} s")
    diff = (simulated["peak_bytes"] - analytic["peak_bytes"]) / analytic["peak_bytes"]
    print(f"median {statistics.median(times):.1f} s (whole command, imports included); simulated peak "
          f"{simulated['peak_bytes'] / 2**30:.2f} GiB, analytic {analytic['peak_bytes'] / 2**30:.2f} GiB: {diff:+.2%}")


if __name__ == "__main__":
    main()
