"""Accuracy of the simulated memory estimate against measured GPU steps.

For every row of shared/calibration/measured-h100.jsonl: build the row's freeze
plan (the same name -> trainable-set mapping as measure.py's `plan()`), run
`simulate_step` with the row's workload, and print predicted vs measured
`peak_allocated_bytes` (GiB), the relative error and the seconds taken; then
the median and max absolute relative error.

    python benchmarks/simulate_accuracy.py [--calibration DIR] [--rows N] [--repeat K]
                                           [--validation] [--extra FILE] [--json OUT]

`--validation` also runs benchmarks/data/validation-h200.jsonl: rows measured
the same way (torch 2.11 + CUDA 13, transformers 5.17, on an H200, also sm90)
with the knobs the calibration file does not vary: gradient checkpointing,
eager attention, SGD / Adafactor / fused AdamW, text-only and two-image batches,
fp32 weights with bf16 autocast, LLaVA-OneVision (Qwen2, tied embeddings, any-res)
and LLaVA-NeXT (Mistral, any-res). Rows marked `input_require_grads_hooks` ran
with transformers' input-embedding requires_grad hooks left active (see each
row's `note`) and are simulated that way. `--extra FILE` adds rows written by
benchmarks/measure_gpu.py (e.g. tests/data/measured-extra-h100.jsonl);
`--rows 0` skips the calibration rows. `--repeat K` runs each row K times and
reports the median wall time (and CPU time: the machine may be shared).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from freezelab.units import GiB  # noqa: E402
VALIDATION = ROOT / "benchmarks" / "data" / "validation-h200.jsonl"
CONFIG_FILES = {  # model name in a row -> config file
    "llava-1.5-7b": None,  # the calibration directory's llava-1.5-7b.config.json
    "llava-1.5-7b-fp32": None,
    "llava-onevision-qwen2-0.5b": ROOT / "assets" / "configs" / "llava-onevision-qwen2-0.5b.json",
    "llava-v1.6-mistral-7b": ROOT / "assets" / "configs" / "llava-v1.6-mistral-7b.json",
}


def find_calibration() -> Path:
    for cand in (ROOT / "shared" / "calibration", ROOT.parent / "shared" / "calibration",
                 Path("/work/shared/calibration")):
        if (cand / "measured-h100.jsonl").exists():
            return cand
    raise SystemExit("calibration directory not found; pass --calibration DIR")


def plan(names: list[str], name: str, n_llm_layers: int) -> set[str]:
    """measure.py's plan(): the parameter names that train under preset `name`."""
    def m(rx: str) -> set[str]:
        return {n for n in names if re.search(rx, n)}
    V, P, L = r"vision_tower\.", r"multi_modal_projector\.", r"(language_model\.|lm_head\.)"
    last4 = "|".join(rf"language_model\.layers\.{i}\." for i in range(n_llm_layers - 4, n_llm_layers))
    return {
        "projector": m(P),
        "projector+llm": m(P) | m(L),
        "llm": m(L),
        "all": set(names),
        "vision": m(V),
        "vision+projector": m(V) | m(P),
        "projector+last4": m(P) | m(last4),
        "last4": m(last4),
        "lm_head": m(r"lm_head\."),
        "none": set(),
    }[name]


def load_config(path: Path):
    from transformers import AutoConfig

    raw = json.loads(path.read_text())
    raw.pop("_freezelab", None)
    raw.pop("architectures", None)
    return AutoConfig.for_model(raw.pop("model_type", "llava"), **raw)


_NAMES: dict[int, list[str]] = {}


def param_names(config) -> list[str]:
    import torch

    from freezelab.families import model_class

    key = id(config)
    if key not in _NAMES:
        cls = model_class(config.model_type)
        with torch.device("meta"):
            _NAMES[key] = [n for n, _ in cls(config).named_parameters()]
    return _NAMES[key]


_META: dict[int, object] = {}


def trainable_of(config, r: dict) -> set[str]:
    """The row's trainable names: measure.py's plan(), or for rows written by
    benchmarks/measure_gpu.py (they have `optimizer_name`) that script's own mapping
    (its projector includes LLaVA-NeXT's image_newline; lm_head of a tied model is the
    input embedding)."""
    if "optimizer_name" not in r:
        return plan(param_names(config), r["plan"], config.text_config.num_hidden_layers)
    import torch

    import measure_gpu
    from freezelab.families import model_class

    key = id(config)
    if key not in _META:
        with torch.device("meta"):
            _META[key] = model_class(config.model_type)(config)
    model = _META[key]
    return measure_gpu.trainable(model, r["plan"], config.text_config.num_hidden_layers)


def workload_of(r: dict):
    from freezelab.workload import Workload

    from freezelab.workload import OPTIMIZERS

    dtypes = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    optimizer = r.get("optimizer_name") or r.get("optimizer", "adamw")
    if optimizer not in OPTIMIZERS:  # calibration rows spell it out
        if not optimizer.startswith("torch.optim.AdamW") or "fused" in optimizer:
            raise ValueError(f"optimizer {optimizer!r} of a row is not understood")
        optimizer = "adamw"
    autocast = r.get("autocast") or ("bf16" if r.get("autocast_bf16") else "none")
    return Workload(batch=r["batch"], text_tokens=r["text_tokens"],
                    images=r.get("images", r.get("images_per_sample", 1)), image_size=r.get("image_size"),
                    dtype=dtypes[r["param_dtype"].replace("torch.", "")], autocast=autocast,
                    optimizer=optimizer, attn=r.get("attn", "sdpa"),
                    grad_ckpt=bool(r.get("grad_ckpt", r.get("grad_checkpointing", False))))


def describe(r: dict, w) -> str:
    knobs = [f"b{w.batch}", f"t{w.text_tokens}"]
    if w.images != 1:
        knobs.append(f"img{w.images}")
    if w.image_size:
        knobs.append(f"@{w.image_size}")
    if w.grad_ckpt:
        knobs.append("ckpt")
    if w.attn != "sdpa":
        knobs.append(w.attn)
    if w.optimizer != "adamw":
        knobs.append(w.optimizer)
    if w.dtype != "bf16":
        knobs.append(w.dtype)
    if w.autocast != "none":
        knobs.append(f"amp-{w.autocast}")
    if r.get("input_require_grads_hooks"):
        knobs.append("hooks")
    return f"{r.get('model', 'llava-1.5-7b')[:22]:22s} {r['plan']:17s} {' '.join(knobs):28s}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=None, help="only the first N calibration rows")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row (median time)")
    ap.add_argument("--validation", action="store_true", help=f"also run {VALIDATION.name}")
    ap.add_argument("--only-validation", action="store_true")
    ap.add_argument("--extra", type=Path, action="append", default=[],
                    help="more measured rows (e.g. tests/data/measured-extra-h100.jsonl)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    from freezelab.memory.simulate import simulate_step

    cal = args.calibration or find_calibration()
    base_cfg = load_config(cal / "llava-1.5-7b.config.json")
    configs = {"llava-1.5-7b": base_cfg, "llava-1.5-7b-fp32": base_cfg}

    sets = []
    if not args.only_validation and args.rows != 0:
        rows = [json.loads(x) for x in (cal / "measured-h100.jsonl").read_text().splitlines() if x.strip()]
        sets.append(("calibration (H100)", rows[: args.rows] if args.rows else rows))
    if args.validation or args.only_validation:
        rows = [json.loads(x) for x in VALIDATION.read_text().splitlines() if x.strip()]
        sets.append(("validation (H200)", [r for r in rows if r.get("ok")]))

    for path in args.extra:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        sets.append((f"{path.name}", [r for r in rows if r.get("ok", True)]))

    all_results = []
    for title, rows in sets:
        print(f"\n== {title}")
        print(f"{'model':22s} {'plan':17s} {'workload':28s} {'measured':>9s} {'predicted':>9s} "
              f"{'error':>7s} {'wall s':>6s} {'cpu s':>6s}  device meas/pred GiB")
        results = []
        for r in rows:
            name = r.get("model", "llava-1.5-7b")
            if name not in configs:
                configs[name] = load_config(CONFIG_FILES.get(name) or ROOT / "assets" / "configs" / f"{name}.json")
            config = configs[name]
            if r.get("text_use_cache") is False:  # the row turned the language model's KV cache off
                config = copy.deepcopy(config)
                config.text_config.use_cache = False
            trainable = trainable_of(config, r)
            w = workload_of(r)
            walls, cpus = [], []
            for _ in range(max(args.repeat, 1)):
                t0, c0 = time.perf_counter(), time.process_time()
                est = simulate_step(config, trainable, w,
                                    input_require_grads=bool(r.get("input_require_grads_hooks")))
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            meas = r["peak_allocated_bytes"]
            err = (est.peak_bytes - meas) / meas
            res = dict(set=title, model=name, plan=r["plan"], workload=w.to_dict(), measured=meas,
                       predicted=est.peak_bytes, rel_error=err, seconds=statistics.median(walls),
                       cpu_seconds=statistics.median(cpus), phase=est.phase,
                       device_measured=r.get("device_used_bytes"), device_predicted=est.device_estimate_bytes,
                       step1_measured=r.get("step1_peak_allocated_bytes"),
                       step1_predicted=est.details.get("step1_peak_bytes"),
                       breakdown=est.breakdown,
                       details={k: v for k, v in est.details.items() if k.endswith("bytes")})
            results.append(res)
            dev = ""
            if res["device_measured"]:
                dev = f"{res['device_measured'] / GiB:6.2f} / {res['device_predicted'] / GiB:6.2f}"
            print(f"{describe(r, w)} {meas / GiB:9.3f} {est.peak_bytes / GiB:9.3f} {err * 100:+6.2f}% "
                  f"{res['seconds']:6.1f} {res['cpu_seconds']:6.1f}  {dev}", flush=True)
        errs = [abs(x["rel_error"]) for x in results]
        print(f"-- {title}: rows {len(results)}  median |error| {statistics.median(errs) * 100:.2f}%  "
              f"max |error| {max(errs) * 100:.2f}%  median wall {statistics.median(x['seconds'] for x in results):.1f} s  "
              f"median cpu {statistics.median(x['cpu_seconds'] for x in results):.1f} s")
        all_results.extend(results)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
