"""Plan export and import.

Each export target is a pure function of (plan, index) returning an Export:
the text to paste, whether it reproduces the plan's trainable set exactly on
that model, and a one-line note (what differs, in parameters, when it does
not). The distributed targets (a DeepSpeed config, an FSDP2 launch line) also
take the workload. TARGETS lists them in display order for menus.

    from freezelab.exports import export, import_plan
    export(plan, index, "llamafactory").text
    export(plan, index, "swift", transformers="4.57").text   # names as the trainer's transformers spells them

A plan with adapters or a quantized base goes to each target's adapter export (finetuning_type lora,
--tuner_type lora, --lora_enable, a PEFT LoraConfig snippet), which compares adapters, full training
and quantized weights with the framework's own selection code (freezelab.exports.adapted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from freezelab.adapters import Adapters, linears
from freezelab.exports import (
    deepspeed,
    fsdp_launch,
    llamafactory,
    llamafactory_lora,
    llava,
    llava_lora,
    peft_snippet,
    plan_json,
    python,
    swift,
    swift_lora,
)
from freezelab.exports.base import Difference, Export, ExportError, compress
from freezelab.exports.naming import parse_version, respell
from freezelab.exports.plan_json import import_plan
from freezelab.index import ModelIndex
from freezelab.plans import Plan, Resolution, resolve
from freezelab.workload import Workload

__all__ = ["TARGETS", "Difference", "Export", "ExportError", "Target", "compress", "export", "export_all",
           "import_plan", "target_names"]


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    description: str       # one line for menus
    suffix: str            # file name suffix for downloads
    render: Callable[..., Export]  # (plan, index, mask), and the workload when uses_workload
    names_parameters: bool = False  # its text names parameters, so it follows a transformers spelling
    uses_workload: bool = False     # its text depends on the workload (GPUs, sharding, offload, dtype)
    # plans with adapters or a quantized base: (plan, index, mask, adapters) -> Export
    render_adapters: Callable[[Plan, ModelIndex, Sequence[bool], Adapters], Export] | None = None

    def run(self, res: Resolution, index: ModelIndex, named: ModelIndex, workload: Workload | None) -> Export:
        plan, chosen = res.plan, named if self.names_parameters else index
        if (plan.has_adapters or plan.quant.on) and self.render_adapters is not None:
            adapters = res.adapters if chosen is index else _respelled(res.adapters, chosen)
            return self.render_adapters(plan, chosen, res.mask, adapters)
        if self.uses_workload:
            return self.render(plan, chosen, res.mask, workload or Workload())
        return self.render(plan, chosen, res.mask)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("json", "freezelab plan JSON", "The plan itself (schema freezelab.plan/2); import it back with --plan.",
           ".json", plan_json.render, render_adapters=plan_json.render),
    Target("python", "Python snippet", "Plain requires_grad_ calls on a transformers model, or with adapters a PEFT "
           "LoraConfig and get_peft_model, ending with an assert of the counts; needs no freezelab.", ".py",
           python.render, True, render_adapters=peft_snippet.render),
    Target("llamafactory", "LLaMA-Factory YAML", "finetuning_type full/freeze/lora and the freeze_* / lora_* keys, "
           "when they reproduce the plan exactly; otherwise the closest keys and what differs.", ".yaml",
           llamafactory.render, True,
           render_adapters=lambda plan, index, mask, adapters: llamafactory_lora.render(index, mask, adapters)),
    Target("swift", "ms-swift flags", "swift sft --tuner_type full (with --freeze_vit / --freeze_aligner / "
           "--freeze_llm and name-prefix lists) or --tuner_type lora.", ".sh", swift.render, True,
           render_adapters=lambda plan, index, mask, adapters: swift_lora.render(index, mask, adapters)),
    Target("llava", "LLaVA train.py flags", "LLaVA's own training script flags (--tune_mm_mlp_adapter, ..., "
           "LLaVA-NeXT's --mm_tunable_parts, or --lora_enable) when they can express the plan.", ".sh", llava.render,
           render_adapters=lambda plan, index, mask, adapters: llava_lora.render(index, mask, adapters)),
    Target("deepspeed", "DeepSpeed config", "ds_config.json for the workload: ZeRO stage of the sharding mode, "
           "optimizer offload, bf16 / fp16, gradient clipping, micro batch.", ".json", deepspeed.render,
           uses_workload=True),
    Target("fsdp", "FSDP2 launch line", "torchrun line running the plan's sanity step through FSDP2 on the "
           "workload's GPUs, with the same layout in accelerate's FSDP2 keys.", ".sh", fsdp_launch.render,
           uses_workload=True),
)}


def target_names() -> list[str]:
    return list(TARGETS)


def _target(name: str) -> Target:
    if name not in TARGETS:
        raise ExportError(f"unknown export format {name!r}; formats: {', '.join(TARGETS)}")
    return TARGETS[name]


def _spelled(index: ModelIndex, transformers: str | None) -> ModelIndex:
    """The index in the spelling of the trainer's transformers (default: the installed one's)."""
    if transformers is None:
        return index
    return respell(index, str(parse_version(transformers)))


def _respelled(adapters: Adapters, named: ModelIndex) -> Adapters:
    """The adapters with the Linear layers of the respelled index (same weight indices, other paths)."""
    by_weight = {lin.weight: lin for lin in linears(named)}
    layers = tuple(replace(a, linear=by_weight[a.linear.weight]) for a in adapters.layers)
    return replace(adapters, layers=layers)


def export(plan: Plan, index: ModelIndex, target: str, transformers: str | None = None,
           workload: Workload | None = None) -> Export:
    """One target; `transformers`: the trainer's transformers version, whose parameter names a
    name-based target uses; `workload`: for the distributed targets (default Workload()). Raises
    SelectorError when a rule matches nothing on this model."""
    chosen = _target(target)
    named = _spelled(index, transformers)  # checks the version even for a target that names no parameter
    return chosen.run(resolve(plan, index), index, named, workload)


def export_all(plan: Plan, index: ModelIndex, transformers: str | None = None,
               workload: Workload | None = None) -> dict[str, Export]:
    """Every target, resolving the plan once (on the installed names: masks follow index order)."""
    res = resolve(plan, index)
    named = _spelled(index, transformers)
    return {name: t.run(res, index, named, workload) for name, t in TARGETS.items()}
