"""Wall time of the sanity step on the built-in tiny model (CPU), for every preset.

in-process: `freezelab.step.run_step` (two steps, all checks) in a process that
has already imported torch and transformers, as the app runs it behind its
button. command: `python -m freezelab step tiny --preset P --json` as a user
runs it (whole process: interpreter start and imports included).

    python benchmarks/step_speed.py [--runs 5] [--no-command]
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
sys.path.insert(0, str(ROOT))

from freezelab.plans import preset, preset_names  # noqa: E402
from freezelab.sources import resolve  # noqa: E402
from freezelab.step import run_step  # noqa: E402
from freezelab.workload import Workload  # noqa: E402

PRESETS = [n if n != "last-N" else "last-2" for n in preset_names()]


def in_process(name: str, runs: int) -> tuple[list[float], bool]:
    source, workload = resolve("tiny"), Workload(dtype="fp32")
    run_step(source, preset(name), workload)  # warm-up: lazy imports of the modeling code
    times, passed = [], True
    for _ in range(runs):
        t0 = time.perf_counter()
        report = run_step(source, preset(name), workload)
        times.append(time.perf_counter() - t0)
        passed = passed and report.passed
    return times, passed


def command(name: str, runs: int) -> tuple[list[float], bool]:
    times, passed = [], True
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "freezelab", "step", "tiny", "--preset", name, "--json"],
                             cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        passed = passed and out.returncode == 0 and json.loads(out.stdout)["passed"]
    return times, passed


def _line(label: str, name: str, times: list[float], passed: bool) -> str:
    return (f"  {label:<11} {name:<17} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, "
            f"max {max(times):.2f}, {len(times)} runs)  checks {'pass' if passed else 'FAIL'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-command", action="store_true", help="skip the whole-process timings")
    args = ap.parse_args()
    print("tiny model, CPU, fp32, 2 steps, batch 1 x (16 image + 64 text) tokens")
    for name in PRESETS:
        print(_line("in-process", name, *in_process(name, args.runs)), flush=True)
    if not args.no_command:
        for name in PRESETS:
            print(_line("command", name, *command(name, args.runs)), flush=True)


if __name__ == "__main__":
    main()
