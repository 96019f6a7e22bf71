"""How close the memory estimators come to real H100 measurements.

    python benchmarks/memory_accuracy.py [--method analytic|simulate|both] [--extra] [--rows PATH]
    python benchmarks/memory_accuracy.py --families [--quick]

Runs each method on every calibration row (../shared/calibration/measured-h100.jsonl,
or its copy in tests/data/), and with --extra also on the rows measured the
same way for other models, checkpointing, autocast, eager attention,
optimizers and text-only batches (tests/data/measured-extra-h100.jsonl).
Prints each row's predicted and measured peak (GiB) and relative error, then
the median and maximum absolute relative error per method against the
targets (analytic: median <= 5%, max <= 12%; simulated: median <= 2%, max <= 5%).
The simulated method needs freezelab.memory.simulate and takes tens of seconds
per 7B row; "both" falls back to analytic alone when it is missing.

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

from freezelab.memory.measured import Case, load  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.plans import resolve as resolve_plan  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.units import GiB  # noqa: E402

TARGETS = {"analytic": (0.05, 0.12), "simulate": (0.02, 0.05)}
SHARED_ROWS = ROOT.parent / "shared" / "calibration" / "measured-h100.jsonl"
CALIBRATION_COPY = ROOT / "tests" / "data" / "calibration-h100.jsonl"   # the same rows, kept with the tests
EXTRA_ROWS = ROOT / "tests" / "data" / "measured-extra-h100.jsonl"


def calibration_path() -> Path:
    """The shared calibration rows when present, else the copy kept with the tests."""
    return SHARED_ROWS if SHARED_ROWS.is_file() else CALIBRATION_COPY


def predict(method: str, case: Case) -> int:
    source = resolve_source(case.model)
    index = case.index_for(index_of(source))
    res = resolve_plan(case.plan, index)
    if method == "analytic":
        from freezelab.memory.analytic import estimate

        return estimate(index, res.mask, case.workload, input_require_grads=case.input_require_grads,
                        adapters=res.adapters).peak_bytes
    from freezelab.memory.simulate import simulate_step

    return simulate_step(hf_config(source), res.trainable_names(index), case.workload, adapters=res.adapters,
                         index=index, processor=index.processor).peak_bytes


def methods(choice: str) -> list[str]:
    has_sim = importlib.util.find_spec("freezelab.memory.simulate") is not None
    if choice == "simulate" and not has_sim:
        sys.exit("freezelab.memory.simulate is not available")
    if choice == "both":
        return ["analytic", "simulate"] if has_sim else ["analytic"]
    return [choice]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("analytic", "simulate", "both"), default="both")
    ap.add_argument("--extra", action="store_true", help="also the extra measured rows")
    ap.add_argument("--rows", type=Path, help="a JSON-lines file of measured rows instead")
    ap.add_argument("--families", action="store_true", help="analytic vs simulated per family beyond LLaVA")
    ap.add_argument("--quick", action="store_true", help="with --families: two cases per family")
    args = ap.parse_args()
    if args.families:
        import family_accuracy

        sys.argv = [sys.argv[0], *(["--quick"] if args.quick else [])]
        return family_accuracy.main()
    cases = load(args.rows) if args.rows else load(calibration_path())
    if args.extra and not args.rows:
        cases += load(EXTRA_ROWS)
    errors: dict[str, list[float]] = {}
    ok = True
    for method in methods(args.method):
        errs = errors.setdefault(method, [])
        print(f"\n== {method} ({len(cases)} rows)")
        print(f"{'case':64s} {'predicted':>10s} {'measured':>10s} {'error':>8s} {'time':>7s}")
        for case in cases:
            t0 = time.perf_counter()
            pred = predict(method, case)
            err = (pred - case.measured) / case.measured
            errs.append(abs(err))
            print(f"{case.label[:64]:64s} {pred / GiB:10.3f} {case.measured / GiB:10.3f} {100 * err:+7.2f}% "
                  f"{time.perf_counter() - t0:6.1f}s", flush=True)
        med, worst = statistics.median(errs), max(errs)
        target_med, target_max = TARGETS[method]
        met = med <= target_med and worst <= target_max
        ok &= met
        print(f"{method}: median |error| {100 * med:.2f}% (target {100 * target_med:.0f}%), "
              f"max {100 * worst:.2f}% (target {100 * target_max:.0f}%): {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
