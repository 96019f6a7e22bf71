"""`python -m freezelab step MODEL [plan options] [workload options] [--steps N] [--lr LR]
[--device cpu|cuda] [--seed S] [--weights] [--image PATH --prompt TEXT --answer TEXT] [--json]`,
and on many GPUs `torchrun --nproc_per_node N -m freezelab step MODEL ... --sharding fsdp|ddp
[--offload-optimizer] [--dist-timeout S]` (rank 0 prints the report).

Exit status: 0 when every check passes (on every rank), 1 when one fails (or the run ran out
of memory, or a rank failed), 2 on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from freezelab import units
from freezelab.batch import Example
from freezelab.cli.common import (
    console as cli_console,
    add_model_argument,
    add_plan_options,
    add_workload_options,
    plan_from_args,
    print_json,
    workload_from_args,
)
from freezelab.sources import resolve as resolve_source
from freezelab.step.world import DEFAULT_TIMEOUT_S
from freezelab.workload import Dtype, Sharding

RUN_SHARDING = (Sharding.FSDP.value, Sharding.DDP.value)

SHOWN_NAMES = 8  # offending names printed per check in the human output (--json has up to 20)


def register(sub: Any) -> None:
    p = sub.add_parser("step", help="run real training steps under a plan and check every parameter",
                       description="Run a few real training steps under a freeze plan and prove it: frozen "
                       "weights bit-identical, every trainable tensor with a finite non-zero gradient, the "
                       "optimizer holding exactly the trainable tensors; measured memory next to the estimate.")
    add_model_argument(p)
    add_plan_options(p)
    add_workload_options(p)
    run = p.add_argument_group("run")
    run.add_argument("--steps", type=int, default=2, metavar="N", help="training steps (default 2; step 2 is "
                     "the steady state)")
    run.add_argument("--lr", type=float, default=1e-5, metavar="LR", help="learning rate (default 1e-5)")
    run.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda or cuda:N")
    run.add_argument("--seed", type=int, default=0, metavar="S", help="seed for weights and batch (default 0)")
    run.add_argument("--weights", action="store_true",
                     help="load the checkpoint's weights (default: random weights built on the device)")
    real = p.add_argument_group("a real example instead of the synthetic batch (needs the checkpoint's processor)")
    real.add_argument("--image", type=Path, metavar="PATH", help="image file")
    real.add_argument("--prompt", default="", metavar="TEXT",
                      help="the question about the image (masked in the labels)")
    real.add_argument("--answer", metavar="TEXT", help="the answer to learn")
    dist = p.add_argument_group("a sharded run, launched with torchrun (rank 0 prints the report)")
    dist.add_argument("--sharding", choices=RUN_SHARDING, default=None,
                      help="fsdp (FSDP2 fully_shard: each layer a unit, then the root) or ddp; without torchrun: "
                      "a group of one")
    dist.add_argument("--offload-optimizer", action="store_true",
                      help="with fsdp: parameter and gradient shards and the optimizer step on the CPU "
                      "(FSDP2's CPUOffloadPolicy)")
    dist.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                      help=f"seconds the rendezvous and each collective may wait for the other ranks "
                      f"(default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_command)


def _example(args: argparse.Namespace) -> Example | None:
    from freezelab.step import StepError

    if args.image is None:
        if args.answer is not None or args.prompt:
            raise StepError("--prompt and --answer go with --image")
        return None
    if args.answer is None:
        raise StepError("--image needs --answer (the text the step learns to produce)")
    return Example(args.image, args.prompt, args.answer)


def run_command(args: argparse.Namespace) -> int:
    from freezelab.step.world import launched_by_torchrun

    if args.sharding is not None or launched_by_torchrun():
        return _run_sharded(args)
    if args.offload_optimizer:
        from freezelab.step import StepError

        raise StepError("--offload-optimizer needs --sharding fsdp")
    from freezelab.step import run_step

    source = resolve_source(args.model)
    plan = plan_from_args(args)
    workload = workload_from_args(args, default_dtype=Dtype.FP32 if args.device == "cpu" else Dtype.BF16)
    item = _example(args)
    progress = None if args.json else _progress_printer()
    report = run_step(source, plan, workload, steps=args.steps, lr=args.lr, device=args.device, seed=args.seed,
                      weights=args.weights, item=item, progress=progress)
    return _show(args, report.to_dict(), report.passed)


def _show(args: argparse.Namespace, data: dict[str, Any], passed: bool) -> int:
    if args.json:
        print_json(data)
    else:
        _print_human(data)
    return 0 if passed else 1


def _run_sharded(args: argparse.Namespace) -> int:
    """One rank of a torchrun launch: its failure is one line naming it; rank 0 prints the report."""
    import sys

    from freezelab.step import StepError
    from freezelab.step.sharded import RankFailed, rank_errors, run_sharded_step
    from freezelab.step.world import plan_world

    world = plan_world(args.device, args.dist_timeout)
    try:
        with rank_errors(world):
            if args.sharding is None:
                raise StepError("under torchrun give --sharding fsdp or --sharding ddp")
            source = resolve_source(args.model)
            plan = plan_from_args(args)
            workload = workload_from_args(args, default_dtype=Dtype.FP32 if world.device == "cpu" else Dtype.BF16)
            workload = workload.with_(gpus=world.size, sharding=args.sharding,
                                      offload_optimizer=args.offload_optimizer)
            item = _example(args)
        progress = None if args.json or world.rank else _progress_printer()
        report = run_sharded_step(source, plan, workload, world, steps=args.steps, lr=args.lr, seed=args.seed,
                                  weights=args.weights, item=item, progress=progress)
    except RankFailed as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return _show(args, report.to_dict(), report.passed) if world.rank == 0 else (0 if report.passed else 1)


def _progress_printer() -> Any:
    from freezelab.step import EventKind

    console = cli_console(stderr=True)

    def show(event: Any) -> None:
        if event.kind == EventKind.STAGE:
            console.print(f"[dim]{event.message}…[/]")

    return show


def _bytes(n: int | None) -> str:
    return "-" if n is None else units.nbytes(n)


def _steps_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    tbl = Table(title="steps", title_justify="left")
    for col in ("step", "loss", "seconds", "peak allocated", "peak reserved", "estimate", "error"):
        tbl.add_column(col, justify="left" if col == "error" else "right")
    for s in data["steps"]:
        rel = s["relative_error"]
        err = s["error"] or ("-" if rel is None else f"{rel:+.1%}" + ("" if s["steady"] else " (warm-up)"))
        tbl.add_row(str(s["step"]), "-" if s["loss"] is None else f"{s['loss']:.4f}", f"{s['seconds']:.2f}",
                    _bytes(s["peak_allocated_bytes"]), _bytes(s["peak_reserved_bytes"]), _bytes(s["estimate_bytes"]),
                    err)
    return tbl


def _time_line(data: dict[str, Any]) -> str:
    """The measured steady-state step time beside the time model's estimate for this card."""
    t, measured = data["time_estimate"], data["measured_seconds"]
    shown = "-" if measured is None else f"{measured:.2f} s"
    if t["seconds"] is None:
        return f"step time: measured {shown}; {t['note']}"
    return f"step time: measured {shown}, estimated {t['seconds']:.2f} s ({t['note']}: {'; '.join(t['assumptions'])})"


def _checks_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    tbl = Table(title="checks", title_justify="left")
    for col in ("check", "result", "details"):
        tbl.add_column(col)
    for name, c in data["checks"].items():
        result = "[green]pass[/]" if c["passed"] else "[yellow]warn[/]" if c["level"] == "warning" else "[red]FAIL[/]"
        details = c["message"]
        for n in c["offending"][:SHOWN_NAMES]:
            details += f"\n  {n}" + (f": {c['causes'][n]}" if n in c["causes"] and c["level"] == "failure" else "")
        if c["count"] > SHOWN_NAMES:
            details += f"\n  … {c['count'] - SHOWN_NAMES} more (--json lists up to 20)"
        tbl.add_row(name, result, details)
    return tbl


def _norms_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    norms = data["grad_norms"]
    tbl = Table(title=f"gradient norms (step {norms.get('step', '-')})", title_justify="left")
    tbl.add_column("component")
    tbl.add_column("norm", justify="right")
    tbl.add_column("per layer")
    layers = norms.get("layers", {})
    for comp, value in norms.get("component", {}).items():
        per_layer = " ".join("·" if v is None else f"{v:.3g}" for v in layers.get(comp, []))
        tbl.add_row(comp, "frozen" if value is None else f"{value:.4g}", per_layer)
    return tbl


def _ranks_table(dist: dict[str, Any]) -> Any:
    from rich.table import Table

    offload = ", optimizer offloaded" if dist["offload_optimizer"] else ""
    tbl = Table(title=f"ranks ({dist['world_size']} x {dist['sharding']} over {dist['backend']}{offload}; peaks of "
                "the steady steps)", title_justify="left")
    for col in ("rank", "host", "device", "peak allocated", "peak reserved", "estimate per GPU", "error",
                "host peak RSS", "checks"):
        tbl.add_column(col, justify="left" if col in ("host", "device", "checks") else "right")
    for r in dist["ranks"]:
        rel = r["relative_error"]
        failed = [name for name, ok in r["checks"].items() if not ok]
        tbl.add_row(str(r["rank"]), r["host"], r["device"], _bytes(r["peak_allocated_bytes"]),
                    _bytes(r["peak_reserved_bytes"]), _bytes(r["estimate_bytes"]), "-" if rel is None else f"{rel:+.1%}",
                    _bytes(r["peak_rss_bytes"]), "pass" if r["passed"] else "FAIL " + ", ".join(failed))
    return tbl


def _print_human(data: dict[str, Any]) -> None:

    console = cli_console()
    b = data["batch"]
    console.print(f"[bold]{data['model']}[/] ({data['model_class']}) on {data['device_name']}, "
                  f"{data['workload']['dtype']} {data['weights']} weights, seed {data['seed']}, lr {data['lr']:g}")
    console.print(f"trains {data['trainable_params']:,} of {data['total_params']:,} parameters "
                  f"({data['trainable_tensors']} tensors); {b['kind']} batch {b['batch']} x {b['seq_len']} tokens "
                  f"({b['images']} image(s) x {b['image_tokens']} tokens + {b['text_tokens']} text)")
    console.print(_steps_table(data))
    console.print(_time_line(data))
    if data["checks"]:
        console.print(_checks_table(data))
        console.print(_norms_table(data))
    if data.get("distributed"):
        console.print(_ranks_table(data["distributed"]))
    for w in data["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    if data["error"]:
        console.print(f"[red]{data['error']}[/]")
    console.print("[bold green]PASSED[/]" if data["passed"] else "[bold red]FAILED[/]")
