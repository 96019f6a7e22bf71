"""`python -m freezelab export MODEL [plan options] [workload options] --format F [--out FILE] [--json]`
(the workload options matter to the deepspeed and fsdp formats)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from freezelab.cli.common import (
    add_model_argument,
    add_plan_options,
    add_workload_options,
    plan_from_args,
    print_json,
    workload_from_args,
)
from freezelab.exports import TARGETS, ExportError, export
from freezelab.models import index_of
from freezelab.sources import resolve as resolve_source


def register(sub: Any) -> None:
    formats = ", ".join(f"{t.name} ({t.title})" for t in TARGETS.values())
    p = sub.add_parser("export", help="write a plan as JSON, a Python snippet, LLaMA-Factory / ms-swift / "
                       "LLaVA settings, a DeepSpeed config or an FSDP2 launch line", description="Export a freeze plan for MODEL. Formats: " + formats + ". "
                       "When a framework cannot express the plan exactly, the closest setting is written and "
                       "what differs is reported.")
    add_model_argument(p)
    add_plan_options(p)
    add_workload_options(p, multi_gpu=True)  # read by the deepspeed and fsdp formats
    p.add_argument("--format", default="json", choices=list(TARGETS), help="what to write (default json)")
    p.add_argument("--target-transformers", metavar="VERSION",
                   help="the transformers version of the trainer that reads the export (e.g. 4.57): python, "
                   "swift and llamafactory then use its parameter names (before 5.6 the vision tower's are "
                   "model.vision_tower.vision_model.*); default: the installed transformers")
    p.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: target, exact, note, differs, language, text")
    p.set_defaults(func=run)


def write_atomic(path: Path, text: str) -> None:
    """All or nothing: a failed write never leaves a truncated file behind."""
    if path.is_dir():
        raise ExportError(f"{path}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ExportError(f"{path}: cannot write: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ExportError(f"{path}: cannot write: {err.strerror or err}") from None


def run(args: argparse.Namespace) -> int:
    source = resolve_source(args.model)
    plan = plan_from_args(args)
    result = export(plan, index_of(source), args.format, transformers=args.target_transformers,
                    workload=workload_from_args(args))
    if args.out:
        write_atomic(args.out, result.text)
    if args.json:
        print_json(dataclasses.asdict(result))
    elif not args.out:
        sys.stdout.write(result.text)
    print(("exact: " if result.exact else "warning: not exact: ") + result.note, file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
