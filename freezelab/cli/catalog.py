"""`python -m freezelab models` and `python -m freezelab presets`: what can be named."""

from __future__ import annotations

import argparse
from typing import Any

from freezelab.cli.common import print_json
from freezelab.plans import PRESETS
from freezelab.sources import known_info


def register(sub: Any) -> None:
    m = sub.add_parser("models", help="list the built-in model names")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_models)
    p = sub.add_parser("presets", help="list the plan presets with their explanations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_presets)


def run_models(args: argparse.Namespace) -> int:
    rows = [{"name": "tiny", "title": "built-in tiny LLaVA", "hub_id": None,
             "description": "random weights, builds in well under a second; for demos and tests"}, *known_info()]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<32} {r['title']}" + (f"  [{r['hub_id']}]" if r["hub_id"] else ""))
    return 0


def run_presets(args: argparse.Namespace) -> int:
    rows = [{"name": p.name if p.name != "last-n" else "last-N", "title": p.title, "explanation": p.explanation,
             "base": p.base, "rules": [f"{a} {s}" for a, s in p.rules]} for p in PRESETS.values()]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<18} {r['title']}: {r['explanation']}")
    return 0
