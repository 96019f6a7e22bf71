"""`python -m freezelab inspect MODEL [plan options] [--depth N] [--json]`."""

from __future__ import annotations

import argparse
from typing import Any

from freezelab import units
from freezelab.anatomy import summary, tree
from freezelab.cli.common import add_model_argument, add_plan_options, plan_from_args, print_json
from freezelab.cli.common import console as cli_console
from freezelab.index import ModelIndex
from freezelab.models import index_of
from freezelab.plans import Resolution, resolve
from freezelab.sources import resolve as resolve_source
from freezelab.workload import DTYPES, Dtype


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="components, counts and module tree under a plan",
                       description="Show a model's components and module tree, and what a freeze plan trains.")
    add_model_argument(p)
    add_plan_options(p)
    p.add_argument("--depth", type=int, default=2, metavar="N", help="tree depth to show (default 2; -1: all)")
    p.add_argument("--dtype", default=Dtype.BF16, choices=DTYPES, help="parameter dtype shown")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def report(base: ModelIndex, res: Resolution, depth: int | None) -> dict[str, Any]:
    index, mask = res.adapted(base)  # counts and tree of the adapted model: base plus adapters
    return {
        "model": index.name,
        "model_class": index.model_class,
        "transformers_version": index.transformers_version,
        **summary(index, mask),
        "plan": res.plan.to_dict(),
        "rules": [{"rule": str(r), "matched_tensors": n} for r, n in zip(res.plan.rules, res.matched)],
        "warnings": res.warnings,
        "layers": {tower: len(paths) for tower, paths in index.layers.items()},
        "components_found": index.recognised,
        "family": _family(index),
        "tied": [list(p.names) for p in index.tied],
        "adapters": _adapters(res),
        "tree": [r.to_dict() for r in tree(index, mask, depth)],
    }


def _adapters(res: Resolution) -> dict[str, Any]:
    """How many Linear layers get adapters, with which rank and alpha, and what the quantized base holds."""
    a = res.adapters
    groups: dict[tuple[int, float], int] = {}
    for layer in a.layers:
        groups[(layer.r, layer.alpha)] = groups.get((layer.r, layer.alpha), 0) + 1
    return {"layers": len(a.layers), "settings": res.plan.lora.to_dict(), "quant": res.plan.quant.to_dict(),
            "quantized_weights": len(a.quantized),
            "ranks": [{"r": r, "alpha": alpha, "layers": n} for (r, alpha), n in groups.items()]}


def _adapter_lines(data: dict[str, Any]) -> list[str]:
    a = data["adapters"]
    lines = []
    if a["layers"]:
        dora = " with DoRA" if a["settings"]["dora"] else ""
        ranks = ", ".join(f"r={g['r']} alpha={g['alpha']:g} on {g['layers']}" for g in a["ranks"])
        lines.append(f"adapters{dora}: {a['layers']} Linear layers ({ranks}; dropout {a['settings']['dropout']:g}), "
                     f"{data['adapter_params']:,} adapter parameters on {data['base_params']:,} base parameters")
    if a["quant"]["bits"] != "none":
        lines.append(f"quantized base: {a['quantized_weights']} frozen Linear weights stored in {a['quant']['bits']}")
    return lines


def _family(index: ModelIndex) -> dict[str, Any]:
    from freezelab.families import family

    fam = family(index.model_type, index.config)
    return {"title": fam.title, "checked": fam.checked, "projector_reads": fam.feature_read.value}


PARTS_OF_LLM = ("embeddings", "lm_head")  # anatomy.component_counts: counted inside llm as well


def component_rows(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, counts) per row of the component table: vision / projector / llm partition the model;
    the LLM's embeddings and lm_head follow it as "of which" rows (one tensor when tied)."""
    comps = data["components"]
    tied = any(any(n.startswith("lm_head.") for n in names) for names in data["tied"])
    rows = [(name, c) for name, c in comps.items() if name not in PARTS_OF_LLM]
    for name in PARTS_OF_LLM:
        if name in comps:
            rows.append((f"  of which {name}" + (" (tied)" if tied else ""), comps[name]))
    return rows


def _print_human(data: dict[str, Any]) -> None:
    from rich.table import Table

    console = cli_console()
    total, trainable = data["total_params"], data["trainable_params"]
    console.print(f"[bold]{data['model']}[/] ({data['model_class']}, transformers {data['transformers_version']})")
    console.print(f"trainable [bold green]{trainable:,}[/] of {total:,} parameters "
                  f"({units.percent(trainable, total)}); frozen {data['frozen_params']:,}")
    for line in _adapter_lines(data):
        console.print(line)
    comp = Table(title="components", title_justify="left")
    for col in ("component", "total", "trainable", "state"):
        comp.add_column(col, justify="right" if col in ("total", "trainable") else "left")
    for label, c in component_rows(data):
        state = "frozen" if c["trainable"] == 0 else "trainable" if c["frozen"] == 0 else "partial"
        comp.add_row(label, units.params(c["total"]), units.params(c["trainable"]), state)
    console.print(comp)
    found = data["components_found"]
    for name in ("vision", "projector", "llm"):
        if name in found:
            console.print(f"  {name}: {found[name]}", highlight=False)
    if not data["family"]["checked"]:
        console.print(f"[yellow]note:[/] {data['model_class']} is a transformers class freezelab has not checked: its "
                      "parts were found by object as listed; which vision parameters get no gradient is assumed "
                      f"from its config (the projector reads the {data['family']['projector_reads'].replace('_', ' ')})")
    tbl = Table(title="module tree", title_justify="left")
    for col in ("module", "type", "total", "trainable", "state", "dtype", "note"):
        tbl.add_column(col, justify="right" if col in ("total", "trainable") else "left")
    for r in data["tree"]:
        tbl.add_row("  " * r["depth"] + (r["name"] or "(model)"), r["type"], units.params(r["total"]),
                    units.params(r["trainable"]), r["state"], r["dtype"], r["tied"])
    console.print(tbl)
    for w in data["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")


def run(args: argparse.Namespace) -> int:
    source = resolve_source(args.model)
    plan = plan_from_args(args)
    index = index_of(source, dtype=args.dtype)
    res = resolve(plan, index)
    data = report(index, res, None if args.depth < 0 else args.depth)
    if args.json:
        print_json(data)
    else:
        _print_human(data)
    return 0
