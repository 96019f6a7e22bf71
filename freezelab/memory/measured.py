"""Rows of real GPU measurements of training steps, read as (plan, workload) cases for the
estimators.

Rows follow the calibration protocol (shared/calibration/README.md): one JSON
object per line with the plan name, the workload and `peak_allocated_bytes`,
as written by the calibration's measure.py, benchmarks/measure_gpu.py or
benchmarks/measure_validation_gpu.py (whose rows spell some fields their own
way: `grad_ckpt`, `images`, `autocast`, `torch.bfloat16`). Plan names map to
freezelab alias notation as the calibration README lists. The caller names the
file: the tests read their copies in tests/data, the benchmarks the shared
calibration rows.

Each script ran its cases one after the other in one process, so every row but
the first of a file ran with both cuBLAS workspaces already allocated by the
cases before it: `Case.workspaces_ready`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezelab.index import ModelIndex
from freezelab.plans import Plan, Rule
from freezelab.workload import Workload

MEASURED_TRANSFORMERS = "5.17.0"   # the stack every row so far was measured on

PLAN_RULES: dict[str, tuple[str, ...] | None] = {
    "projector": ("@projector",),
    "projector+llm": ("@projector", "@llm"),
    "llm": ("@llm",),
    "all": None,
    "vision": ("@vision",),
    "vision+projector": ("@vision", "@projector"),
    "last4": ("@llm.layers[-4:]",),
    "projector+last4": ("@projector", "@llm.layers[-4:]"),
    "lm_head": ("@lm_head",),
}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
MODEL_ALIASES = {"llava-1.5-7b-fp32": "llava-1.5-7b"}   # validation rows name the fp32 build apart


@dataclass(frozen=True)
class Case:
    row: dict[str, Any]
    model: str
    plan: Plan
    workload: Workload
    input_require_grads: bool | None
    measured: int
    workspaces_ready: bool = False   # an earlier case of the same process allocated the cuBLAS workspaces

    @property
    def device_measured(self) -> int | None:
        """What nvidia-smi showed (total minus free), when the row has it."""
        return self.row.get("device_used_bytes")

    @property
    def label(self) -> str:
        w = self.workload
        bits = [self.model, self.row["plan"], f"bs{w.batch}x{self.row.get('seq_len', '?')}", w.dtype]
        if w.autocast != "none":
            bits.append(f"autocast-{w.autocast}")
        if w.grad_ckpt:
            bits.append("ckpt")
        if w.attn != "sdpa":
            bits.append(w.attn)
        if w.optimizer != "adamw":
            bits.append(w.optimizer)
        if w.images == 0:
            bits.append("text-only")
        if self.input_require_grads and not w.grad_ckpt:
            bits.append("leftover-input-hooks")
        return " ".join(bits)

    def index_for(self, index: ModelIndex) -> ModelIndex:
        """The index as the measured stack's transformers would build it (for version-dependent behaviour)."""
        return dataclasses.replace(index, transformers_version=MEASURED_TRANSFORMERS)


def plan_of(name: str) -> Plan:
    rules = PLAN_RULES[name]
    if rules is None:
        return Plan("trainable")
    return Plan("frozen", tuple(Rule("train", s) for s in rules))


def case_of(row: dict[str, Any], workspaces_ready: bool = False) -> Case:
    autocast = row.get("autocast") or ("bf16" if row.get("autocast_bf16") else "none")
    ckpt = bool(row.get("grad_checkpointing", row.get("grad_ckpt", False)))
    optimizer = row.get("optimizer_name") or row.get("optimizer", "adamw")
    workload = Workload(batch=row["batch"], text_tokens=row["text_tokens"],
                        images=row.get("images_per_sample", row.get("images", 1)), image_size=row.get("image_size"),
                        dtype=DTYPES[row["param_dtype"].removeprefix("torch.")], autocast=autocast,
                        optimizer=optimizer if not optimizer.startswith("torch.optim.AdamW") else "adamw",
                        grad_ckpt=ckpt, attn=row.get("attn", "sdpa"))
    hooks = row.get("input_require_grads_hooks")
    plan = Plan("frozen") if row.get("trainable_params") == 0 else plan_of(row["plan"])  # lm_head of a tied model
    return Case(row, MODEL_ALIASES.get(row["model"], row["model"]), plan, workload,
                None if hooks is None or hooks == ckpt else hooks, row["peak_allocated_bytes"], workspaces_ready)


def load(path: Path) -> list[Case]:
    """The cases of a JSON-lines file of measured rows (rows marked "ok": false are skipped)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [case_of(r, workspaces_ready=i > 0) for i, r in enumerate(rows) if r.get("ok", True)]
