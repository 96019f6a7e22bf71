"""Rows of real GPU measurements of training steps, read as (plan, workload) cases for the
estimators.

Rows follow the calibration protocol (shared/calibration/README.md): one JSON
object per line with the plan name, the workload and `peak_allocated_bytes`,
as written by the calibration's measure.py or benchmarks/measure_gpu.py. Plan
names map to freezelab alias notation as the calibration README lists. The
caller names the file: the tests read their copies in tests/data, the
benchmarks the shared calibration rows.
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


@dataclass(frozen=True)
class Case:
    row: dict[str, Any]
    model: str
    plan: Plan
    workload: Workload
    input_require_grads: bool | None
    measured: int

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


def case_of(row: dict[str, Any]) -> Case:
    autocast = "bf16" if row.get("autocast_bf16") else "none"
    workload = Workload(batch=row["batch"], text_tokens=row["text_tokens"], images=row["images_per_sample"],
                        image_size=row.get("image_size"), dtype=DTYPES[row["param_dtype"]], autocast=autocast,
                        optimizer=row.get("optimizer_name", "adamw"), grad_ckpt=row["grad_checkpointing"],
                        attn=row.get("attn", "sdpa"))
    hooks = row.get("input_require_grads_hooks")
    return Case(row, row["model"], plan_of(row["plan"]), workload,
                None if hooks is None or hooks == row["grad_checkpointing"] else hooks, row["peak_allocated_bytes"])


def load(path: Path) -> list[Case]:
    """The cases of a JSON-lines file of measured rows (rows marked "ok": false are skipped)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [case_of(r) for r in rows if r.get("ok", True)]
