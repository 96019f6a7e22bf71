"""Options and helpers shared by the CLI commands: the MODEL argument, plan options, output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from freezelab.errors import PlanError
from freezelab.plans import Plan, Rule, from_json, from_text, preset
from freezelab.sources import known_names


class _RuleAction(argparse.Action):
    """--train / --freeze append to one ordered list, so `--train A --freeze B` keeps its order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        rules = list(getattr(namespace, "rules", None) or [])
        rules.append((self.const, values))
        namespace.rules = rules


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="tiny, a known architecture (" + ", ".join(known_names()[:3]) + ", ...; see "
                        "`python -m freezelab models`), a path to config.json or a checkpoint directory, "
                        "or a Hub id org/name")


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("plan (rules apply in order, last match wins)")
    group.add_argument("--preset", metavar="P", help="start from a preset: stage1, stage2, full, llm, "
                       "vision-projector, last-N (e.g. last-4), lm-head, frozen")
    group.add_argument("--plan", metavar="FILE", type=Path,
                       help="start from a plan file (freezelab plan JSON, or one rule per line)")
    group.add_argument("--train", metavar="SEL", action=_RuleAction, const="train", dest="rules",
                       help="train what SEL selects (@projector, @llm.layers[-4:], a glob, re:REGEX)")
    group.add_argument("--freeze", metavar="SEL", action=_RuleAction, const="freeze", dest="rules",
                       help="freeze what SEL selects")


def read_plan_file(path: Path) -> Plan:
    if not path.is_file():
        raise PlanError(f"{path}: no such plan file")
    text = path.read_bytes()
    if text.lstrip().startswith(b"{"):
        return from_json(text)
    try:
        return from_text(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not a text file") from None


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.preset and args.plan:
        raise PlanError("give either --preset or --plan, not both")
    plan = read_plan_file(args.plan) if args.plan else preset(args.preset) if args.preset else Plan()
    for action, selector in getattr(args, "rules", None) or []:
        plan = Plan(plan.base, (*plan.rules, Rule(action, selector)), plan.preset)
    return plan


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
