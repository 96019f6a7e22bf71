"""How close the memory estimators come to real GPU measurements: the tensor peak and what nvidia-smi shows.

    python benchmarks/memory_accuracy.py [--method analytic|simulate|both] [--extra] [--all] [--rows PATH]

Runs each method on every calibration row (../shared/calibration/measured-h100.jsonl,
or its copy in tests/data/); with --extra also on the rows measured the same way
for other models, checkpointing, autocast, eager attention, optimizers and
text-only batches (tests/data/measured-extra-h100.jsonl); with --all also on the
H200 validation rows (tests/data/validation-h200.jsonl). Prints each row's
measured and predicted tensor peak (`peak_allocated_bytes`, GiB) and its relative
error, then the device figure beside it (`device_estimate_bytes` against the
measured `device_used_bytes`: total minus free, CUDA context and allocator cache
included); then the median and maximum absolute relative errors per method
against the targets (tensor peak: analytic median <= 5%, max <= 12%; simulated
median <= 2%, max <= 5%; device: median <= 3%, max <= 6% for both). Every row but
the first of its file ran after other cases in the same process, so its cuBLAS
workspaces already existed (`Case.workspaces_ready`). The simulated method takes
seconds per row; "both" falls back to analytic alone when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.memory.measured import Case, load  # noqa: E402
from freezelab.memory.result import MemoryEstimate  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.plans import resolve as resolve_plan  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.units import GiB  # noqa: E402

TARGETS = {"analytic": (0.05, 0.12), "simulate": (0.02, 0.05)}
DEVICE_TARGET = (0.03, 0.06)
SHARED_ROWS = ROOT.parent / "shared" / "calibration" / "measured-h100.jsonl"
CALIBRATION_COPY = ROOT / "tests" / "data" / "calibration-h100.jsonl"   # the same rows, kept with the tests
EXTRA_ROWS = ROOT / "tests" / "data" / "measured-extra-h100.jsonl"
VALIDATION_ROWS = ROOT / "tests" / "data" / "validation-h200.jsonl"


def calibration_path() -> Path:
    """The shared calibration rows when present, else the copy kept with the tests."""
    return SHARED_ROWS if SHARED_ROWS.is_file() else CALIBRATION_COPY


def predict(method: str, case: Case) -> MemoryEstimate:
    source = resolve_source(case.model)
    index = case.index_for(index_of(source))
    res = resolve_plan(case.plan, index)
    if method == "analytic":
        from freezelab.memory.analytic import estimate

        return estimate(index, res.mask, case.workload, input_require_grads=case.input_require_grads,
                        workspaces_ready=case.workspaces_ready)
    from freezelab.memory.simulate import simulate_step

    hooks = case.input_require_grads if case.input_require_grads is not None else False
    return simulate_step(hf_config(source), res.trainable_names(index), case.workload,
                         input_require_grads=hooks, workspaces_ready=case.workspaces_ready)


def methods(choice: str) -> list[str]:
    has_sim = importlib.util.find_spec("freezelab.memory.simulate") is not None
    if choice == "simulate" and not has_sim:
        sys.exit("freezelab.memory.simulate is not available")
    if choice == "both":
        return ["analytic", "simulate"] if has_sim else ["analytic"]
    return [choice]


def summary(name: str, errors: list[float], target: tuple[float, float]) -> bool:
    med, worst = statistics.median(errors), max(errors)
    met = med <= target[0] and worst <= target[1]
    print(f"  {name}: median |error| {100 * med:.2f}% (target {100 * target[0]:.0f}%), max {100 * worst:.2f}% "
          f"(target {100 * target[1]:.0f}%): {'met' if met else 'NOT met'}")
    return met


def run(method: str, cases: list[Case]) -> bool:
    print(f"\n== {method} ({len(cases)} rows)")
    print(f"{'case':62s} {'measured':>9s} {'predicted':>9s} {'error':>8s} | {'device':>7s} {'predicted':>9s} "
          f"{'error':>8s} {'time':>6s}")
    errs, dev_errs = [], []
    for case in cases:
        t0 = time.perf_counter()
        est = predict(method, case)
        err = (est.peak_bytes - case.measured) / case.measured
        errs.append(abs(err))
        line = (f"{case.label[:62]:62s} {case.measured / GiB:9.3f} {est.peak_bytes / GiB:9.3f} {100 * err:+7.2f}% |")
        device = case.device_measured
        if device:
            dev_err = (est.device_estimate_bytes - device) / device
            dev_errs.append(abs(dev_err))
            line += f" {device / GiB:7.2f} {est.device_estimate_bytes / GiB:9.2f} {100 * dev_err:+7.2f}%"
        print(f"{line} {time.perf_counter() - t0:5.1f}s", flush=True)
    met = summary("tensor peak", errs, TARGETS[method])
    if dev_errs:
        met &= summary("device", dev_errs, DEVICE_TARGET)
    return met


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("analytic", "simulate", "both"), default="both")
    ap.add_argument("--extra", action="store_true", help="also the extra measured rows")
    ap.add_argument("--all", action="store_true", help="the extra rows and the H200 validation rows too")
    ap.add_argument("--rows", type=Path, help="a JSON-lines file of measured rows instead")
    args = ap.parse_args()
    cases = load(args.rows) if args.rows else load(calibration_path())
    if (args.extra or args.all) and not args.rows:
        cases += load(EXTRA_ROWS)
    if args.all and not args.rows:
        cases += load(VALIDATION_ROWS)
    ok = True
    for method in methods(args.method):
        ok &= run(method, cases)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
