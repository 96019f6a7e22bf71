"""The compute part of `estimate`: FLOPs per step, step time per GPU and training time, with the
options that set the time model's efficiencies and the dataset."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from freezelab import units
from freezelab.compute.flops import Flops
from freezelab.compute.timing import DEFAULT, Efficiency, stated, step_times, training_time
from freezelab.memory.gpus import Link
from freezelab.workload import Workload

LINKS = tuple(link.value for link in Link)


def add_time_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("time (estimates for CUDA GPUs)")
    group.add_argument("--mfu", type=float, default=DEFAULT.mfu, metavar="F",
                       help=f"fraction of the dense peak FLOP/s matmuls reach (default {DEFAULT.mfu})")
    group.add_argument("--bandwidth-efficiency", type=float, default=DEFAULT.bandwidth, metavar="F",
                       help="fraction of the memory bandwidth bandwidth-bound ops and the optimizer reach "
                       f"(default {DEFAULT.bandwidth})")
    group.add_argument("--network-efficiency", type=float, default=DEFAULT.network, metavar="F",
                       help=f"fraction of the link bandwidth collectives reach (default {DEFAULT.network})")
    group.add_argument("--interconnect", choices=LINKS, default=None,
                       help="what joins the GPUs with --gpus N (default: NVLink on the SXM cards, else PCIe)")
    group.add_argument("--samples", type=int, default=None, metavar="N",
                       help="training time for a dataset of N samples (batch is per GPU)")
    group.add_argument("--epochs", type=int, default=1, metavar="N", help="passes over the samples (default 1)")


def efficiency_from_args(args: argparse.Namespace) -> Efficiency:
    return Efficiency(args.mfu, args.bandwidth_efficiency, args.network_efficiency)


def time_report(flops: Flops, w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """`flops`, `step_seconds` ({gpu: seconds}) and `time` (each GPU's step by part, its assumptions
    and, with --samples, the training time)."""
    eff = efficiency_from_args(args)
    link = Link(args.interconnect) if args.interconnect else None
    rows = []
    for st in step_times(flops, w, eff, link):
        row = st.to_dict()
        if args.samples is not None:
            row["training"] = training_time(st, w, args.samples, args.epochs).to_dict()
        rows.append(row)
    return {"flops": flops.to_dict(), "step_seconds": {r["gpu"]: r["seconds"] for r in rows},
            "time": {"efficiency": asdict(eff), "interconnect": args.interconnect, "samples": args.samples,
                     "epochs": args.epochs, "assumptions": stated(w, eff, link), "gpus": rows}}


def print_time(console: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    f = data["flops"]
    if f is None:
        counted = data.get("details", {}).get("flops")
        if counted:
            console.print(f"FlopCounterMode on the simulated step: forward {units.flops(counted['forward'])}, "
                          f"backward {units.flops(counted['backward'])}")
        console.print(f"step time: not estimated ({data['flops_not_modelled']})", highlight=False)
        return
    console.print(f"compute per step: {units.flops(f['counted'])} (forward {units.flops(f['forward'])}, backward "
                  f"input {units.flops(f['backward_input'])}, backward weight {units.flops(f['backward_weight'])}"
                  + (f", recompute {units.flops(f['recompute'])}" if f["recompute"] else "")
                  + f"); optimizer step {units.flops(f['optimizer'])} elementwise")
    counted = data.get("details", {}).get("flops")
    if counted:
        console.print(f"FlopCounterMode on the simulated step: forward {units.flops(counted['forward'])}, backward "
                      f"{units.flops(counted['backward'])} (analytic: {units.flops(f['forward'])}, "
                      f"{units.flops(f['backward'])})")
    t = data["time"]
    training = t["samples"] is not None
    table = Table(title="estimated step time per GPU (CUDA; the sanity step measures it)", title_justify="left")
    for col in ("gpu", "peak", "step", "matmul", "other ops", "optimizer", "exposed comm.", *(
            [f"{t['samples']:,} samples x {t['epochs']}"] if training else [])):
        table.add_column(col, justify="left" if col == "gpu" else "right")
    for r in t["gpus"]:
        other = r["forward"] + r["backward"] - r["matmul"]
        cells = [r["gpu"], f"{r['peak_tflops']:g} TFLOP/s", units.duration(r["seconds"]), units.duration(r["matmul"]),
                 units.duration(other), units.duration(r["optimizer"]), units.duration(r["exposed_communication"])]
        if training:
            cells.append(f"{units.duration(r['training']['seconds'])} ({r['training']['steps']:,} steps)")
        table.add_row(*cells)
    console.print(table)
    console.print("assumptions: " + "; ".join(t["assumptions"]))
