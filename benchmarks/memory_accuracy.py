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
included); then the median and maximum absolute relative errors per method, for
each file of rows and for all of them, against what the README claims
(freezelab.memory.claims; with --all these are the figures the claims round up).
Every row but
the first of its file ran after other cases in the same process, so its cuBLAS
workspaces already existed (`Case.workspaces_ready`). The simulated method takes
seconds per row; "both" falls back to analytic alone when it is missing.

    python benchmarks/memory_accuracy.py --families [--quick]

--families runs benchmarks/family_accuracy.py instead: the analytic estimate against
the simulated one for each family beyond LLaVA (no GPU measurements of those yet).
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

from freezelab.memory.claims import DEVICE, TENSOR_PEAK, Claim  # noqa: E402
from freezelab.memory.measured import Case, load  # noqa: E402
from freezelab.memory.result import MemoryEstimate, Method  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.plans import resolve as resolve_plan  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.units import GiB  # noqa: E402

SHARED_ROWS = ROOT.parent / "shared" / "calibration" / "measured-h100.jsonl"
CALIBRATION_COPY = ROOT / "tests" / "data" / "calibration-h100.jsonl"   # the same rows, kept with the tests
EXTRA_ROWS = ROOT / "tests" / "data" / "measured-extra-h100.jsonl"
VALIDATION_ROWS = ROOT / "tests" / "data" / "validation-h200.jsonl"
ALL_ROWS = 60   # what the README's claims are over (--all)


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
                        workspaces_ready=case.workspaces_ready, adapters=res.adapters)
    from freezelab.memory.simulate import simulate_step

    hooks = case.input_require_grads if case.input_require_grads is not None else False
    return simulate_step(hf_config(source), res.trainable_names(index), case.workload,
                         input_require_grads=hooks, workspaces_ready=case.workspaces_ready,
                         adapters=res.adapters, index=index, processor=index.processor)


def methods(choice: str) -> list[str]:
    has_sim = importlib.util.find_spec("freezelab.memory.simulate") is not None
    if choice == "simulate" and not has_sim:
        sys.exit("freezelab.memory.simulate is not available")
    if choice == "both":
        return ["analytic", "simulate"] if has_sim else ["analytic"]
    return [choice]


def summary(name: str, errors: list[float], claim: Claim, whole: bool) -> bool:
    """The median and max against the README's claim; on part of the rows (`whole` False) only the max
    is held to it (the claimed median is over all the rows)."""
    med, worst = statistics.median(errors), max(errors)
    met = (med <= claim.median or not whole) and worst <= claim.max
    print(f"    {name}: median |error| {100 * med:.2f}% (README {100 * claim.median:.1f}% over all rows), "
          f"max {100 * worst:.2f}% (README {100 * claim.max:.1f}%): {'met' if met else 'NOT met'}")
    return met


def run(method: str, groups: list[tuple[str, list[Case]]]) -> bool:
    """Each row of each group, then the errors per group and over all of them against the README's claims."""
    cases = [c for _, group in groups for c in group]
    print(f"\n== {method} ({len(cases)} rows)")
    print(f"{'case':62s} {'measured':>9s} {'predicted':>9s} {'error':>8s} | {'device':>7s} {'predicted':>9s} "
          f"{'error':>8s} {'time':>6s}")
    errs: dict[str, list[float]] = {}
    dev_errs: dict[str, list[float]] = {}
    for name, group in groups:
        for case in group:
            t0 = time.perf_counter()
            est = predict(method, case)
            err = (est.peak_bytes - case.measured) / case.measured
            errs.setdefault(name, []).append(abs(err))
            line = f"{case.label[:62]:62s} {case.measured / GiB:9.3f} {est.peak_bytes / GiB:9.3f} {100 * err:+7.2f}% |"
            device = case.device_measured
            if device:
                dev_err = (est.device_estimate_bytes - device) / device
                dev_errs.setdefault(name, []).append(abs(dev_err))
                line += f" {device / GiB:7.2f} {est.device_estimate_bytes / GiB:9.2f} {100 * dev_err:+7.2f}%"
            print(f"{line} {time.perf_counter() - t0:5.1f}s", flush=True)
    if len(groups) > 1:
        errs["all"] = [e for v in errs.values() for e in v]
        dev_errs["all"] = [e for v in dev_errs.values() for e in v]
    met = True
    for name, values in errs.items():
        print(f"  {name} ({len(values)} rows)")
        whole = name == "all" or (len(groups) == 1 and len(values) == ALL_ROWS)
        met &= summary("tensor peak", values, TENSOR_PEAK[Method(method)], whole)
        if dev_errs.get(name):
            met &= summary("device", dev_errs[name], DEVICE[Method(method)], whole)
    return met


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("analytic", "simulate", "both"), default="both")
    ap.add_argument("--extra", action="store_true", help="also the extra measured rows")
    ap.add_argument("--all", action="store_true", help="the extra rows and the H200 validation rows too")
    ap.add_argument("--rows", type=Path, help="a JSON-lines file of measured rows instead")
    ap.add_argument("--families", action="store_true", help="analytic vs simulated per family beyond LLaVA")
    ap.add_argument("--quick", action="store_true", help="with --families: two cases per family")
    args = ap.parse_args()
    if args.families:
        import family_accuracy

        sys.argv = [sys.argv[0], *(["--quick"] if args.quick else [])]
        return family_accuracy.main()
    first = args.rows or calibration_path()
    groups = [(first.name, load(first))]
    if (args.extra or args.all) and not args.rows:
        groups.append((EXTRA_ROWS.name, load(EXTRA_ROWS)))
    if args.all and not args.rows:
        groups.append((VALIDATION_ROWS.name, load(VALIDATION_ROWS)))
    ok = True
    for method in methods(args.method):
        ok &= run(method, groups)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
