"""The analytic and the simulated estimate against each other over the workload grid.

    python benchmarks/agreement_grid.py [--model tiny] [--cells full|pairwise|N] [--batch 2]
                                        [--text-tokens 32] [--top 10] [--seed 0]

The grid (freezelab.memory.agreement): parameter dtype x autocast (the valid
pairs) x every preset x gradient checkpointing x optimizer x attention, 1,792
cells. `--model` is a MODEL argument (tiny, a shipped name, a config path) or
`qwen-tied`, the tiny SigLIP + Qwen2 model with grouped-query attention and
tied embeddings from tests/tiny_configs.py. `--cells full` runs every cell (the
tiny models take about 10 minutes); `pairwise` a subset in which every pair of
values of any two axes appears (66 cells, what the tests run); N a seeded
random sample of N cells (for the shipped 0.5B and 7B configs, whose simulated
steps take seconds each). Prints each cell's error (analytic - simulated, of the
peak without cuBLAS workspaces) and the device figures' difference, then the
worst cells, the median and the maximum against the tolerance. Exit status 1
when a cell is outside it or the workspaces differ.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.memory.agreement import TOLERANCE, Agreement, compare, grid, pairwise, worst  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.sources import resolve  # noqa: E402
from freezelab.workload import Dtype  # noqa: E402


def source_of(model: str):
    if model == "qwen-tied":
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_configs

        return resolve(str(tiny_configs.write(Path(tempfile.mkdtemp()), "qwen-tied")))
    return resolve(model)


def pick(cells, how: str, seed: int):
    if how == "full":
        return cells
    if how == "pairwise":
        return pairwise(cells)
    return random.Random(seed).sample(cells, min(int(how), len(cells)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--cells", default="pairwise")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--last-n", type=int, default=2)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = source_of(args.model)
    config = hf_config(src)
    indexes = {d: index_of(src, dtype=d) for d in Dtype}
    cells = pick(grid(args.last_n), args.cells, args.seed)
    print(f"{args.model}: {len(cells)} cells, batch {args.batch} x {args.text_tokens} text tokens, "
          f"tolerance {100 * TOLERANCE:.2f}%", flush=True)
    results: list[Agreement] = []
    t0 = time.perf_counter()
    for c in cells:
        r = compare(indexes, config, c, last_n=args.last_n, batch=args.batch, text_tokens=args.text_tokens)
        results.append(r)
        flag = "" if abs(r.error) <= TOLERANCE and r.workspaces_agree else "  <-- outside"
        print(f"{c.label:58s} {100 * r.error:+7.3f}%  device {100 * r.device_error:+7.3f}%{flag}", flush=True)
    errors = [abs(r.error) for r in results]
    print(f"\nworst {args.top} cells:")
    for r in sorted(results, key=lambda r: -abs(r.error))[: args.top]:
        print("  " + r.describe())
    w = worst(results)
    bad = [r for r in results if abs(r.error) > TOLERANCE or not r.workspaces_agree]
    devs = [abs(r.device_error) for r in results]
    print(f"\n{len(results)} cells in {time.perf_counter() - t0:.0f} s: median |error| {100 * statistics.median(errors):.3f}%, "
          f"max {100 * max(errors):.3f}% ({w.cell.label}); device median {100 * statistics.median(devs):.2f}%, "
          f"max {100 * max(devs):.2f}%; {len(bad)} outside the tolerance of {100 * TOLERANCE:.2f}%")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
