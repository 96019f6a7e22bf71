"""Wall time of `python -m freezelab inspect` as a user runs it (whole process).

first run: an empty user cache; a known architecture's index ships in
assets/indexes/ for the pinned transformers release, so neither torch nor
transformers is imported. uncached: the same config with one inert extra key,
so no index exists anywhere: torch + transformers are imported and the model is
built on the meta device (what any new architecture, or another transformers
release, costs once). warm: the second run of that uncached config.

    python benchmarks/inspect_speed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ("llava-1.5-7b", ["--train", "@projector"]),
    ("llava-onevision-qwen2-72b", ["--preset", "stage2"]),
]


def run_once(model: str, args: list[str], cache: str) -> tuple[float, dict]:
    env = dict(os.environ, FREEZELAB_CACHE=cache)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "freezelab", "inspect", model, *args, "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    for model, args in CASES:
        first, uncached, warm = [], [], []
        for n in range(runs):
            with tempfile.TemporaryDirectory() as cache:
                seconds, data = run_once(model, args, cache)
                first.append(seconds)
                config = json.loads((ROOT / "assets" / "configs" / f"{model}.json").read_text())
                config["benchmark_nonce"] = n  # an inert key: a config no index knows
                path = Path(cache) / "config.json"
                path.write_text(json.dumps(config))
                uncached.append(run_once(str(path), args, cache)[0])
                warm.append(run_once(str(path), args, cache)[0])
        print(f"{model} {' '.join(args)}: total {data['total_params']:,}, trainable {data['trainable_params']:,}")
        for label, xs in (("first run", first), ("uncached", uncached), ("warm", warm)):
            print(f"  {label:<20} median {statistics.median(xs):.2f} s  (min {min(xs):.2f}, max {max(xs):.2f}, "
                  f"{runs} runs)")


if __name__ == "__main__":
    main()
