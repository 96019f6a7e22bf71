"""Export target: the torchrun line that runs the plan's sanity step through FSDP2 on the workload's
GPUs, with the settings a training script needs for the same sharding.

The line carries the plan as freezelab's own `--preset` / `--train` / `--freeze` options and the
workload as its options. It is verified the way the command line will read it: parsed by freezelab's
own argument parser and resolved on the model, it must give exactly the plan's trainable set (and the
workload, with `--sharding fsdp`). The comment lines give the same FSDP2 layout for a training script
(each vision encoder layer and decoder layer its own unit, then the root) in accelerate's FSDP2 keys.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from freezelab.exports.base import Export, counts_line, difference, describe, printable
from freezelab.index import ModelIndex
from freezelab.plans import Action, Base, Plan, Rule, preset, resolve
from freezelab.workload import Dtype, Sharding, Workload

DEFAULTS = Workload(dtype=Dtype.BF16)   # what `step --device cuda` assumes when an option is left out
OPTIONS = (("batch", "--batch"), ("text_tokens", "--text-tokens"), ("images", "--images"),
           ("image_size", "--image-size"), ("dtype", "--dtype"), ("autocast", "--autocast"),
           ("optimizer", "--optimizer"), ("attn", "--attn"))


def plan_options(plan: Plan) -> list[str]:
    """--preset / --train / --freeze options that rebuild `plan` (its base made explicit with @all when the
    first rule would imply another one)."""
    rules = list(plan.rules)
    out: list[str] = []
    if plan.preset:
        try:
            start = preset(plan.preset)
        except Exception:  # noqa: BLE001 - a plan file may name a preset this release lacks
            start = None
        if start is not None and start.base == plan.base and tuple(rules[:len(start.rules)]) == start.rules:
            out, rules = ["--preset", plan.preset], rules[len(start.rules):]
    if not out and Plan(None, tuple(rules)).effective_base != plan.effective_base:
        rules.insert(0, Rule(Action.TRAIN if plan.effective_base == Base.TRAINABLE else Action.FREEZE, "@all"))
    for rule in rules:
        out += [f"--{rule.action}", rule.selector]
    return out


def workload_options(w: Workload) -> list[str]:
    out = []
    for field, flag in OPTIONS:
        value = getattr(w, field)
        if value != getattr(DEFAULTS, field):
            out += [flag, str(value)]
    if w.grad_ckpt:
        out.append("--grad-ckpt")
    if w.offload_optimizer:
        out.append("--offload-optimizer")
    return out


def command(model: str, plan: Plan, w: Workload) -> list[str]:
    return ["torchrun", "--nproc_per_node", str(w.gpus), "-m", "freezelab", "step", model, *plan_options(plan),
            *workload_options(w), "--device", "cuda", "--sharding", "fsdp"]


def read_back(argv: list[str], index: ModelIndex) -> tuple[list[bool], Workload]:
    """What freezelab's command line makes of `argv` (a `command`): the trainable mask and the workload."""
    from freezelab.cli import parser
    from freezelab.cli.common import plan_from_args, workload_from_args

    args = parser().parse_args(argv[argv.index("-m") + 2:])
    mask = resolve(plan_from_args(args), index).mask
    w = workload_from_args(args, default_dtype=Dtype.BF16).with_(gpus=int(argv[2]), sharding=args.sharding,
                                                                  offload_optimizer=args.offload_optimizer)
    return mask, w


def _accelerate(index: ModelIndex, w: Workload) -> list[str]:
    classes = sorted({index.module_by_path[p].type for paths in index.layers.values() for p in paths})
    return ["# the same FSDP2 layout for a training script (accelerate config keys):",
            "#   fsdp_version: 2",
            f"#   fsdp_transformer_layer_cls_to_wrap: {','.join(classes)}",
            "#   fsdp_reshard_after_forward: true",
            f"#   fsdp_offload_params: {'true' if w.offload_optimizer else 'false'}",
            "#   fsdp_cpu_ram_efficient_loading: true"]


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool], workload: Workload) -> Export:
    w = workload.with_(sharding=Sharding.FSDP)
    argv = command(index.name, plan, w)
    got_mask, got_w = read_back(argv, index)
    line = " ".join(shlex.quote(a) for a in argv)
    head = [f"# freezelab: {printable(index.name)}, {counts_line(index, mask)}; FSDP2 on {w.gpus} GPU(s)",
            *_accelerate(index, w)]
    text = "\n".join([*head, line]) + "\n"
    diff = difference(mask, got_mask)
    note = f"torchrun line for the sanity step under FSDP2 on {w.gpus} GPU(s), {counts_line(index, mask)}"
    if diff or got_w != w:
        what = describe(index, diff, "the line") if diff else "the line reads back as another workload"
        return Export("fsdp", f"# NOT EXACT: {printable(what)}\n" + text, False, what, diff.numel(index), "shell")
    return Export("fsdp", text, True, note, 0, "shell")
