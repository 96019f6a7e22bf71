"""`python -m freezelab estimate MODEL [plan options] [workload options] [--method analytic|simulate]
[--gpu-memory GIB] [--json]`: GPU memory of one training step under a plan.

`--json` prints one object: method, peak_bytes (tensor bytes at the steady-state
peak, what torch.cuda.max_memory_allocated reports), breakdown (bytes per
category at the peak), phase, activations_by_component, device_estimate_bytes
(with allocator cache and CUDA context: what nvidia-smi would show), fits (a
bool for --gpu-memory, else {gpu name: bool} over common GPUs: true only when the
device figure plus its measured error fits), verdict (the same shape, each
{verdict: fits | tight | does not fit, headroom_bytes, margin_bytes}),
device_error (the method's measured error behind the margin), allocator_hint
(a sentence when the allocator's cache is large, else null), gpus (each with
memory, verdict, headroom and margin; common GPUs also with their architecture,
their own device figure and whether they were measured), gpu_count (per-GPU
device figure for 1 to 64 GPUs under each sharding mode, and the smallest number
of each common GPU on which it fits, margin included; null where the analytic
estimate does not follow the model or workload, as it walks the analytic stages),
image_tokens, notes, workload, plan, trainable_params, model and details; and what
the step costs in time: flops (the analytic count, split by forward,
backward-input, backward-weight, recompute and optimizer, by component and by
stage; with --method simulate, details.flops holds FlopCounterMode's count of the
simulated step), step_seconds ({gpu: seconds per step}) and time (each GPU's step
by part with its assumptions, and with --samples the training time); flops,
step_seconds and time are null, and flops_not_modelled says why, for a model or
workload the analytic model does not follow (with --method simulate: a family it has
not modelled, a video).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from freezelab import units
from freezelab.anatomy import summary
from freezelab.cli.timing import add_time_options, print_time, time_report
from freezelab.cli.common import (
    console as cli_console,
    add_model_argument,
    add_plan_options,
    add_workload_options,
    plan_from_args,
    print_json,
    workload_from_args,
)
from freezelab.index import ModelIndex
from freezelab.memory.result import CATEGORIES, MemoryEstimate
from freezelab.memory.gpus import fits_custom, fits_table, parse_gib
from freezelab.memory.verdict import allocator_hint, error_of
from freezelab.models import index_of
from freezelab.plans import Resolution, resolve
from freezelab.sources import Source
from freezelab.sources import resolve as resolve_source
from freezelab.workload import Workload

METHODS = ("analytic", "simulate")


def register(sub: Any) -> None:
    p = sub.add_parser("estimate", help="GPU memory of one training step under a plan, and why",
                       description="Estimate the peak GPU memory of one steady-state training step under a "
                       "freeze plan: weights, gradients, optimizer state, freeze-aware activations, logits.")
    add_model_argument(p)
    add_plan_options(p)
    add_workload_options(p, multi_gpu=True)
    p.add_argument("--method", choices=METHODS, default="analytic",
                   help="analytic (instant, from the architecture) or simulate (runs the real step on fake "
                   "tensors: seconds to a minute)")
    p.add_argument("--gpu-memory", metavar="GIB", help="does it fit a GPU of this many GiB? (default: a table "
                   "of common GPUs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_time_options(p)
    p.set_defaults(func=run)


def _progress(fraction: float, message: str) -> None:
    print(f"[{100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True)


def _simulate(source: Source, index: ModelIndex, res: Resolution, workload: Workload,
              quiet: bool) -> MemoryEstimate:
    from freezelab.memory.simulate import simulate_step
    from freezelab.models import hf_config

    return simulate_step(hf_config(source), res.trainable_names(index), workload,
                         progress=None if quiet else _progress, adapters=res.adapters, index=index,
                         processor=index.processor)


def _fits(est: MemoryEstimate, gpu_bytes: int | None) -> tuple[Any, Any, list[dict[str, Any]]]:
    """(fits, verdict, gpu rows): `fits` a bool per card (true only for the FITS verdict), `verdict` per
    card its verdict, headroom and margin; for --gpu-memory one of each instead of a mapping."""
    rows = [fits_custom(est, gpu_bytes)] if gpu_bytes is not None else fits_table(est)
    verdicts = {r["gpu"]: {k: r[k] for k in ("verdict", "headroom_bytes", "margin_bytes")} for r in rows}
    if gpu_bytes is not None:
        return rows[0]["fits"], verdicts[rows[0]["gpu"]], rows
    return {r["gpu"]: r["fits"] for r in rows}, verdicts, rows


def report(index: ModelIndex, res: Resolution, workload: Workload, est: MemoryEstimate,
           gpu_bytes: int | None) -> dict[str, Any]:
    from freezelab.memory.analytic import followed
    from freezelab.memory.device_figure import cache_share_of
    from freezelab.memory.gpu_count import gpu_count

    fits, verdict, gpus = _fits(est, gpu_bytes)
    counts = summary(*res.adapted(index))  # base plus adapters, as PEFT counts them
    # the GPU-count table walks the analytic stages: not for a model or workload they do not follow
    needed = (gpu_count(index, res.mask, workload, cublas_workspaces=est.cublas_workspaces,
                        cache_share=cache_share_of(est), adapters=res.adapters)
              if followed(index, workload) is None else None)
    return {
        "model": index.name,
        "method": est.method,
        "peak_bytes": est.peak_bytes,
        "breakdown": est.breakdown,
        "phase": est.phase,
        "activations_by_component": est.activations_by_component,
        "device_estimate_bytes": est.device_estimate_bytes,
        "fits": fits,
        "verdict": verdict,
        "device_error": error_of(est.method),
        "allocator_hint": allocator_hint(est),
        "gpus": gpus,
        "notes": est.notes,
        "workload": workload.to_dict(),
        "plan": res.plan.to_dict(),
        "trainable_params": counts["trainable_params"],
        "total_params": counts["total_params"],
        "adapter_params": counts["adapter_params"],
        "base_params": counts["base_params"],
        "warnings": res.warnings,
        "image_tokens": image_tokens(index, workload),
        "gpu_count": needed.to_dict() if needed is not None else None,
        "details": est.details,
    }


def image_tokens(index: ModelIndex, workload: Workload) -> dict[str, Any]:
    """What the images of one sample become (freezelab.tokens), whichever method estimated."""
    from freezelab.tokens import LLAVA_TYPES, sample_layouts, workload_sequence

    layouts = sample_layouts(index.config, workload, index.processor)
    return {
        "per_sample": sum(lay.image_tokens for lay in layouts),
        "around_images": sum(lay.special_tokens for lay in layouts),
        "sequence_length": workload_sequence(index.config, workload, index.processor),
        "images": [{"size": list(lay.size), "resized": list(lay.resized), "tiles": lay.tiles,
                    "image_tokens": lay.image_tokens, "special_tokens": lay.special_tokens,
                    "layout": lay.describe()} for lay in layouts],
        "processor_settings": index.processor.get("source") or (
            "none needed: the model config holds the image layout" if index.model_type in LLAVA_TYPES
            else "the image processor classes' defaults (the source gave no processor settings)"),
    }


def _gpu_count_table(count: dict[str, Any]) -> Any:
    from rich.table import Table

    offload = ", optimizer offloaded" if count["offload_optimizer"] else ""
    modes = list(count["smallest"])
    tbl = Table(title=f"smallest number of GPUs that fits, per sharding mode (analytic, up to {count['counts'][-1]}"
                f"{offload}; -: not even then)", title_justify="left")
    tbl.add_column("GPU")
    for mode in modes:
        tbl.add_column(mode, justify="right")
    for card in next(iter(count["smallest"].values())):
        tbl.add_row(card, *("-" if count["smallest"][m][card] is None else str(count["smallest"][m][card])
                            for m in modes))
    return tbl


def _print_human(data: dict[str, Any]) -> None:
    from rich.table import Table

    console = cli_console()
    w = data["workload"]
    adapters = f" ({data['adapter_params']:,} in adapters)" if data["adapter_params"] else ""
    console.print(f"[bold]{data['model']}[/]: {data['trainable_params']:,} of {data['total_params']:,} parameters "
                  f"train{adapters}; batch {w['batch']} x ({w['images']} image(s) + {w['text_tokens']} text tokens), "
                  f"{w['dtype']}, {w['optimizer']}" + (", gradient checkpointing" if w["grad_ckpt"] else "")
                  + (f", {w['gpus']} GPUs {w['sharding']}" if w["gpus"] > 1 else ""))
    tokens = data["image_tokens"]
    if tokens["images"]:
        shapes = "; ".join(f"{'x'.join(map(str, i['size']))}: {i['image_tokens']:,}" + (
            f" in {i['tiles']} tiles" if i["tiles"] > 1 else "") for i in tokens["images"])
        around = f" + {tokens['around_images']:,} around them" if tokens["around_images"] else ""
        console.print(f"image tokens per sample: {tokens['per_sample']:,}{around} ({shapes}); sequence "
                      f"{tokens['sequence_length']:,} tokens", highlight=False)
    peak = data["peak_bytes"]
    table = Table(title=f"{data['method']} estimate: peak in the {data['phase']} phase", title_justify="left")
    for col in ("category", "at the peak", "share"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat in CATEGORIES:
        value = data["breakdown"].get(cat, 0)
        if value:
            table.add_row(cat.replace("_", " "), units.gib(value, 2), units.percent(value, peak))
    table.add_row("[bold]tensors (peak)[/]", f"[bold]{units.gib(peak, 2)}[/]", "")
    table.add_row("with cache + CUDA context", units.gib(data["device_estimate_bytes"], 2), "")
    console.print(table)
    acts = {k: v for k, v in data["activations_by_component"].items() if v}
    if acts:
        console.print("activations kept for backward: " + ", ".join(f"{k} {units.gib(v, 2)}" for k, v in acts.items()))
    console.print(f"per GPU (device figure, ± {100 * data['device_error']:.1f}% as measured): "
                  + ", ".join(_verdict_text(r) for r in data["gpus"]))
    assumed = [r["gpu"] for r in data["gpus"] if not r["measured"]]
    if assumed:
        console.print("[dim]measured on sm90 cards (H100, H200); the same CUDA context and allocator assumed "
                      "for: " + ", ".join(assumed) + "[/]")
    if data["allocator_hint"]:
        console.print(f"[yellow]hint:[/] {data['allocator_hint']}")
    if data["gpu_count"] is not None:
        console.print(_gpu_count_table(data["gpu_count"]))
    else:
        console.print("smallest number of GPUs: not estimated (the table walks the analytic estimate, which does "
                      "not follow this model or workload)")
    for note in data["notes"]:
        console.print(f"- {note}")
    print_time(console, data)
    for warning in data["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


def _verdict_text(row: dict[str, Any]) -> str:
    colour = {"fits": "green", "tight": "yellow"}.get(row["verdict"], "red")
    spare = row["headroom_bytes"]
    left = f"{units.gib(spare, 1)} left" if spare >= 0 else f"{units.gib(-spare, 1)} short"
    return f"{row['gpu']} [{colour}]{row['verdict']}[/] ({left})"


def run(args: argparse.Namespace) -> int:
    workload = workload_from_args(args)
    gpu_bytes = parse_gib(args.gpu_memory) if args.gpu_memory is not None else None
    source = resolve_source(args.model)
    plan = plan_from_args(args)
    index = index_of(source)
    res = resolve(plan, index)
    if args.method == "simulate":
        est = _simulate(source, index, res, workload, quiet=False)
    else:
        from freezelab.memory.analytic import estimate

        est = estimate(index, res.mask, workload, adapters=res.adapters)
    from freezelab.compute.flops import flops_followed, step_flops

    data = report(index, res, workload, est, gpu_bytes)
    why = flops_followed(index, workload)
    if why is None:
        data.update(time_report(step_flops(index, res.mask, workload, adapters=res.adapters), workload, args))
    else:
        data.update({"flops": None, "step_seconds": None, "time": None, "flops_not_modelled": why})
    if args.json:
        print_json(data)
    else:
        _print_human(data)
    return 0
