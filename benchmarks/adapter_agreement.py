"""How closely the analytic estimate agrees with the simulated one for plans with adapters.

    python benchmarks/adapter_agreement.py [--models M ...] [--quick] [--qlora]

Over a grid of targets (LLaVA-1.5's recipe: all Linear layers of the LLM plus the projector in full; q and
v only; the vision tower and the LLM), adapter kinds (LoRA with dropout 0.05, DoRA without), ranks
(8, 128), batch shapes (1 x 64 and 4 x 448 text tokens) and gradient checkpointing (off, on), on
llava-1.5-7b and llava-onevision-qwen2-0.5b (bf16, AdamW, one image), prints each case's analytic and
simulated peak and their relative difference, then the median and maximum absolute difference per model
and over all cases (target: median <= 1%, max <= 2%). The simulated step runs PEFT's own modules on fake
tensors; tens of seconds per 7B case. `--qlora` adds the same grid with a 4-bit NF4 base, whose
bitsandbytes layers both methods model from the same facts (no GPU measurement exists of any of these:
there are no measured adapter rows). `--quick`: one batch shape, no checkpointing, rank 8 only.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.memory.analytic import estimate  # noqa: E402
from freezelab.memory.simulate import simulate_step  # noqa: E402
from freezelab.models import hf_config, index_of  # noqa: E402
from freezelab.plan_files import from_text  # noqa: E402
from freezelab.plans import resolve  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.units import GiB  # noqa: E402
from freezelab.workload import Workload  # noqa: E402

MODELS = ("llava-1.5-7b", "llava-onevision-qwen2-0.5b")
TARGETS = {
    "llm+projector": "train @projector\nlora @llm",
    "q,v": "lora re:language_model\\..*\\.(q|v)_proj\\.weight",
    "vision+llm": "lora @vision\nlora @llm",
}
KINDS = {"lora": "dropout=0.05", "dora": "dora=true"}
RANKS = (8, 128)
SHAPES = ((1, 64), (4, 448))
TARGET = (0.01, 0.02)


def cases(quick: bool, qlora: bool) -> list[tuple[str, str, int, int, int, bool]]:
    ranks, shapes, ckpts = ((8,), SHAPES[:1], (False,)) if quick else (RANKS, SHAPES, (False, True))
    out = []
    for target, kind, r, (batch, tokens), ckpt in itertools.product(TARGETS, KINDS, ranks, shapes, ckpts):
        quant = "quant 4bit\n" if qlora else ""
        text = f"{quant}adapter r={r} alpha={2 * r} {KINDS[kind]}\n{TARGETS[target]}"
        out.append((f"{target} {kind} r={r}", text, batch, tokens, ckpt))
    return out


def run_case(model: str, text: str, batch: int, tokens: int, ckpt: bool) -> tuple[int, int]:
    source = resolve_source(model)
    index = index_of(source)
    res = resolve(from_text(text), index)
    w = Workload(batch=batch, text_tokens=tokens, grad_ckpt=ckpt)
    a = estimate(index, res.mask, w, adapters=res.adapters).peak_bytes
    s = simulate_step(hf_config(source), res.trainable_names(index), w, adapters=res.adapters, index=index).peak_bytes
    return a, s


def summary(name: str, diffs: list[float]) -> str:
    med, top = statistics.median(diffs), max(diffs)
    ok = med <= TARGET[0] and top <= TARGET[1]
    return (f"{name}: {len(diffs)} cases, |analytic - simulated| / simulated median {100 * med:.2f}%, "
            f"max {100 * top:.2f}% ({'within' if ok else 'OUTSIDE'} 1% / 2%)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--qlora", action="store_true", help="also the grid with a 4-bit NF4 base (modelled)")
    args = ap.parse_args()
    every: list[float] = []
    grids = [False, True] if args.qlora else [False]
    for qlora in grids:
        label = "QLoRA (4-bit NF4 base, modelled)" if qlora else "LoRA / DoRA"
        print(f"== {label}")
        for model in args.models:
            diffs = []
            for name, text, batch, tokens, ckpt in cases(args.quick, qlora):
                t0 = time.perf_counter()
                a, s = run_case(model, text, batch, tokens, ckpt)
                d = (a - s) / s
                diffs.append(abs(d))
                print(f"{model:28} {name:26} {batch}x{tokens:<4} ckpt={'on ' if ckpt else 'off'} analytic "
                      f"{a / GiB:7.2f} GiB  simulated {s / GiB:7.2f} GiB  {100 * d:+6.2f}%  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            print(summary(model, diffs), flush=True)
            if not qlora:
                every += diffs
    print(summary("all LoRA / DoRA cases", every))
    print("No GPU measurement of an adapter step exists here: the simulated step (PEFT's own modules on fake "
          "tensors) is the reference.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
