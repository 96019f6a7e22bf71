"""Export target: a DeepSpeed config (`ds_config.json`) for the plan's workload.

DeepSpeed takes the freeze plan from the model itself, so the config holds the workload: the ZeRO
stage of the sharding mode, optimizer offload, bf16 / fp16, gradient clipping and the per-GPU micro
batch. What DeepSpeed does with frozen parameters (microsoft/DeepSpeed @ 38327e0, v0.16):

* ZeRO-1/2 (deepspeed/runtime/zero/stage_1_and_2.py, `DeepSpeedZeroOptimizer.__init__`): only
  parameters with `requires_grad` enter the flat bit16 groups that are partitioned and get fp32
  master weights and optimizer state; frozen ones stay whole on every GPU.
* ZeRO-3 (stage3.py, `_get_trainable_parameter_groups`): every parameter is partitioned, frozen ones
  included (their shard is what they cost), but fp32 partitions and optimizer state exist only for
  trainable ones.

So a model whose `requires_grad` flags follow the plan (the Python export) and an optimizer over the
trainable parameters train exactly the plan. The config is exact when DeepSpeed can run the workload
as freezelab estimates it: not for `fsdp` (PyTorch FSDP2; ZeRO-3 is the closest), not for fp32
weights with autocast (DeepSpeed's bf16 mode keeps bf16 weights with fp32 master copies instead), not
for an optimizer DeepSpeed does not build from a config (its own config optimizer is left out then).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from freezelab.exports.base import Export, counts_line, printable
from freezelab.index import ModelIndex
from freezelab.plans import Plan
from freezelab.workload import Autocast, Dtype, Optimizer, Sharding, Workload

ZERO_STAGE = {Sharding.DDP: 0, Sharding.ZERO1: 1, Sharding.ZERO2: 2, Sharding.ZERO3: 3, Sharding.FSDP: 3}
# DeepSpeed builds these from its config (engine._configure_basic_optimizer); others come from the script.
DS_OPTIMIZER = {Optimizer.ADAMW: "AdamW", Optimizer.ADAMW_FUSED: "AdamW", Optimizer.SGD: "SGD",
                Optimizer.SGD_MOMENTUM: "SGD"}
GRADIENT_CLIPPING = 1.0      # transformers' TrainingArguments.max_grad_norm default, LLaVA's scripts' setting
LR = 1e-5                    # the sanity step's default learning rate; set your own


def _precision(w: Workload) -> dict[str, Any]:
    half = w.dtype if w.dtype != Dtype.FP32 else Dtype(w.autocast) if w.autocast != Autocast.NONE else None
    return {"bf16": {"enabled": half == Dtype.BF16}, "fp16": {"enabled": half == Dtype.FP16}}


def _zero(w: Workload) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": ZERO_STAGE[w.sharding]}
    if w.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if zero["stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return zero


def config(w: Workload) -> dict[str, Any]:
    """The ds_config dict of workload `w`."""
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": w.batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": GRADIENT_CLIPPING,
        **_precision(w),
        "zero_optimization": _zero(w),
    }
    name = DS_OPTIMIZER.get(w.optimizer)
    if name is not None:
        params: dict[str, Any] = {"lr": LR}
        if w.optimizer == Optimizer.SGD_MOMENTUM:
            params["momentum"] = 0.9
        out["optimizer"] = {"type": name, "params": params}
    return out


def gaps(w: Workload) -> list[str]:
    """Why DeepSpeed cannot run `w` as freezelab estimates it (empty: it can)."""
    out = []
    if w.sharding == Sharding.FSDP:
        out.append("fsdp is PyTorch FSDP2, which DeepSpeed does not run: ZeRO-3 is the closest stage "
                   "(use the FSDP2 launch export)")
    if w.dtype == Dtype.FP32 and w.autocast != Autocast.NONE:
        out.append(f"fp32 weights with {w.autocast} autocast: DeepSpeed's {w.autocast} mode keeps {w.autocast} "
                   "weights with fp32 master copies instead")
    if w.optimizer not in DS_OPTIMIZER:
        out.append(f"{w.optimizer} is not built by DeepSpeed from its config: pass it from the script")
    return out


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool], workload: Workload) -> Export:
    problems = gaps(workload)
    stage = ZERO_STAGE[workload.sharding]
    text = json.dumps(config(workload), indent=2) + "\n"
    use = ("apply the plan to the model first (the Python export), then "
           "deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], "
           "config='ds_config.json')")
    head = (f"DeepSpeed ZeRO-{stage} on {workload.gpus} GPU(s) for {printable(index.name)}, "
            f"{counts_line(index, mask)}; {use}")
    if problems:
        return Export("deepspeed", text, False, "closest config: " + "; ".join(problems) + f". {head}", 0, "json")
    return Export("deepspeed", text, True, head, 0, "json")
