"""Options and helpers shared by the CLI commands: the MODEL argument, plan and workload options, output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dataclasses import replace

from freezelab.errors import PlanError
from freezelab.lora import QUANT_BITS, QUANT_TYPES, LoraSettings, Quantization
from freezelab.plans import MAX_PLAN_BYTES, Action, Plan, Rule, preset
from freezelab.sources import known_names
from freezelab.workload import (
    ATTENTION,
    AUTOCAST,
    DTYPES,
    OPTIMIZERS,
    SHARDING,
    Attention,
    Autocast,
    Dtype,
    Optimizer,
    Sharding,
    Workload,
    parse_size,
)


class _RuleAction(argparse.Action):
    """--train / --freeze / --lora append to one ordered list, so `--train A --freeze B` keeps its order."""

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
    group.add_argument("--train", metavar="SEL", action=_RuleAction, const=Action.TRAIN, dest="rules",
                       help="train what SEL selects (@projector, @llm.layers[-4:], a glob, re:REGEX)")
    group.add_argument("--freeze", metavar="SEL", action=_RuleAction, const=Action.FREEZE, dest="rules",
                       help="freeze what SEL selects")
    group.add_argument("--lora", metavar="SEL", action=_RuleAction, const=Action.LORA, dest="rules",
                       help="LoRA adapters on every nn.Linear whose weight SEL selects (@llm: all its Linear "
                       "layers but the output head, as PEFT's all-linear); repeatable")
    adapter = parser.add_argument_group("adapters (the settings of every --lora rule; PEFT's defaults)")
    adapter.add_argument("--lora-r", type=int, metavar="N", help="LoRA rank (default 8, or the plan file's)")
    adapter.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA alpha: scale alpha/r (default 8)")
    adapter.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input (default 0)")
    adapter.add_argument("--dora", action=argparse.BooleanOptionalAction, default=None,
                         help="DoRA: a trained magnitude per output feature on top of LoRA")
    adapter.add_argument("--quant", choices=QUANT_BITS, default=None,
                         help="store the frozen Linear weights in 8 or 4 bits (bitsandbytes; default none)")
    adapter.add_argument("--quant-type", choices=QUANT_TYPES, default=None, help="4-bit data type (default nf4)")
    adapter.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=None,
                         help="4-bit: quantize the block constants too (default on)")


def read_plan_file(path: Path) -> Plan:
    """A plan file: freezelab plan JSON or one rule per line (size-checked before reading)."""
    from freezelab.exports import import_plan

    if not path.is_file():
        raise PlanError(f"{path}: no such plan file")
    if path.stat().st_size > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: {path.stat().st_size:,} bytes; a plan file may have at most {MAX_PLAN_BYTES:,}")
    try:
        return import_plan(path.read_bytes())
    except PlanError as err:
        raise PlanError(f"{path}: {err}") from None


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.preset and args.plan:
        raise PlanError("give either --preset or --plan, not both")
    plan = read_plan_file(args.plan) if args.plan else preset(args.preset) if args.preset else Plan()
    for action, selector in getattr(args, "rules", None) or []:
        plan = replace(plan, rules=(*plan.rules, Rule(action, selector)))
    return replace(plan, lora=_settings(args, plan.lora), quant=_quant(args, plan.quant))


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """The options among `names` (option attribute -> field) given on the command line."""
    out = {}
    for attr, name in names.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[name] = int(value) if name == "alpha" and float(value).is_integer() else value
    return out


def _settings(args: argparse.Namespace, base: LoraSettings) -> LoraSettings:
    given = _given(args, {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "dora": "dora"})
    return replace(base, **given) if given else base


def _quant(args: argparse.Namespace, base: Quantization) -> Quantization:
    given = _given(args, {"quant": "bits", "quant_type": "quant_type", "double_quant": "double_quant"})
    return replace(base, **given) if given else base


def console(stderr: bool = False) -> Any:
    """A rich console at least 120 columns wide: module paths are long, and a pipe defaults to 80."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            """rich would exit with status 1; main() ends every command the same way on a closed pipe."""
            self.quiet = True
            raise BrokenPipeError

    return _Console(stderr=stderr, width=max(Console(stderr=stderr).width, 120))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def add_workload_options(parser: argparse.ArgumentParser, *, multi_gpu: bool = False) -> None:
    """The training-step shape and numerics (freezelab.workload.Workload); --dtype defaults per command."""
    group = parser.add_argument_group("workload (one training step)")
    group.add_argument("--batch", type=int, default=1, metavar="N", help="samples per step (default 1)")
    group.add_argument("--text-tokens", type=int, default=64, metavar="N",
                       help="non-image tokens per sample (default 64)")
    group.add_argument("--images", type=int, default=None, metavar="N",
                       help="images per sample (default: 1, or one per --image-size; 0: text only)")
    group.add_argument("--image-size", action="append", default=None, metavar="HxW",
                       help="source image height x width in pixels (e.g. 336x672; one number: a square); repeat it "
                       "for several images of different sizes per sample, one --image-size per image "
                       "(default: the model's native size)")
    group.add_argument("--frames", type=int, default=0, metavar="N",
                       help="add one video of N frames per sample (Qwen2-VL family; default 0)")
    group.add_argument("--dtype", choices=DTYPES, default=None, help="parameter dtype")
    group.add_argument("--autocast", choices=AUTOCAST, default=Autocast.NONE, help="autocast dtype (default none)")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=Optimizer.ADAMW, help="optimizer (default adamw)")
    group.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=False,
                       help="gradient checkpointing (non-reentrant)")
    group.add_argument("--attn", choices=ATTENTION, default=Attention.SDPA,
                       help="attention implementation (default sdpa)")
    if multi_gpu:
        group.add_argument("--gpus", type=int, default=1, metavar="N", help="data-parallel GPUs (default 1)")
        group.add_argument("--sharding", choices=SHARDING, default=Sharding.DDP, help="how state is split across GPUs")
        group.add_argument("--offload-optimizer", action="store_true", help="optimizer state in CPU memory")


def image_options(sizes: list[str] | None, images: int | None) -> dict[str, Any]:
    """images / image_size / image_sizes from --images and the --image-size values (one square side stays
    image_size, as before; anything else becomes (height, width) pairs, one per image or one for all)."""
    parsed = [parse_size(text) for text in sizes or []]
    count = images if images is not None else (len(parsed) if len(parsed) > 1 else 1)
    if len(parsed) == 1 and isinstance(parsed[0], int):
        return {"images": count, "image_size": parsed[0]}
    pairs = tuple(p if isinstance(p, tuple) else (p, p) for p in parsed)
    return {"images": count, "image_sizes": pairs}


def workload_from_args(args: argparse.Namespace, *, default_dtype: Dtype = Dtype.BF16) -> Workload:
    """The Workload the options describe (validated: a bad value raises WorkloadError)."""
    return Workload(batch=args.batch, text_tokens=args.text_tokens, frames=args.frames,
                    **image_options(args.image_size, args.images),
                    dtype=args.dtype or default_dtype, autocast=args.autocast, optimizer=args.optimizer,
                    grad_ckpt=args.grad_ckpt, attn=args.attn, gpus=getattr(args, "gpus", 1),
                    sharding=getattr(args, "sharding", None) or Sharding.DDP,
                    offload_optimizer=getattr(args, "offload_optimizer", False))
