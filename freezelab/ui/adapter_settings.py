"""The adapter panel's settings as a plan holds them (shown in the panel's controls)."""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.plans import Plan
from freezelab.ui.registry import shown


@dataclass
class AdapterSettings:
    """The adapter panel's controls, as the plan has them (an imported plan or an undo changes them)."""

    r: int = shown("adapter.r")
    alpha: float = shown("adapter.alpha")
    dropout: float = shown("adapter.dropout")
    dora: bool = shown("adapter.dora")
    quant: str = shown("adapter.quant")
    quant_type: str = shown("adapter.quant_type")
    double_quant: bool = shown("adapter.double_quant")

    @classmethod
    def of(cls, plan: Plan) -> AdapterSettings:
        s, q = plan.lora, plan.quant
        return cls(s.r, s.alpha, s.dropout, s.dora, q.bits.value, q.quant_type.value, q.double_quant)
