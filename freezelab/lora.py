"""A plan's adapter settings: LoRA / DoRA hyper-parameters and the quantization of the frozen base.

Pure data (no torch, no PEFT): the plan holds them, `freezelab.adapters` resolves them against a model
index, and `freezelab.peft_build` turns them into PEFT's `LoraConfig` and transformers'
`BitsAndBytesConfig`.

Defaults are PEFT 0.21's `LoraConfig` defaults (r=8, lora_alpha=8, lora_dropout=0.0, use_dora=False);
the scale of an adapter's output is alpha / r. Quantization defaults to none; `4bit` defaults to NF4 with
double quantization, QLoRA's recipe (Dettmers et al. 2023), which transformers' `BitsAndBytesConfig`
spells `bnb_4bit_quant_type="nf4"`, `bnb_4bit_use_double_quant=True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from freezelab.choices import member, spelled
from freezelab.errors import PlanError

MAX_RANK = 8192          # far above any published recipe (LLaVA-1.5: 128); bounds what a plan file can ask for
MAX_ALPHA = 1_000_000.0


class QuantBits(StrEnum):
    """How the frozen base weights of Linear layers are stored."""

    NONE = "none"
    INT8 = "8bit"          # bitsandbytes LLM.int8 (Linear8bitLt)
    NF4 = "4bit"           # bitsandbytes 4-bit (Linear4bit), nf4 or fp4


class QuantType(StrEnum):
    """The 4-bit data type."""

    NF4 = "nf4"
    FP4 = "fp4"


QUANT_BITS = tuple(q.value for q in QuantBits)
QUANT_TYPES = tuple(q.value for q in QuantType)


def rank(value: Any, what: str = "LoRA rank r") -> int:
    """A LoRA rank: a whole number from 1 to MAX_RANK."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise PlanError(f"{what} must be a whole number from 1 to {MAX_RANK}, got {value!r}")
    return value


def alpha(value: Any, what: str = "LoRA alpha") -> float | int:
    """A LoRA alpha: a positive finite number (kept an int when given one, as PEFT's lora_alpha is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_ALPHA:
        raise PlanError(f"{what} must be a number above 0 and at most {MAX_ALPHA:g}, got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


def dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value < 1:
        raise PlanError(f"LoRA dropout must be a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{what} must be true or false, got {value!r}")
    return value


def _choice(choice: type[StrEnum], value: Any, what: str) -> Any:
    found = member(choice, value)
    if found is None:
        raise PlanError(f"{what} must be {spelled(choice)}, got {value!r}")
    return found


@dataclass(frozen=True)
class LoraSettings:
    """The plan-wide adapter hyper-parameters; a `lora` rule may override r and alpha for its layers."""

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    dora: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", rank(self.r))
        object.__setattr__(self, "alpha", alpha(self.alpha))
        object.__setattr__(self, "dropout", dropout(self.dropout))
        object.__setattr__(self, "dora", _flag(self.dora, "dora"))

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "dora": self.dora}

    @classmethod
    def from_dict(cls, data: Any) -> LoraSettings:
        if not isinstance(data, dict):
            raise PlanError("plan 'lora' must be an object with r, alpha, dropout and dora")
        unknown = set(data) - {"r", "alpha", "dropout", "dora"}
        if unknown:
            raise PlanError(f"unknown plan 'lora' field(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**data)

    def to_text(self) -> str:
        return f"adapter r={self.r} alpha={self.alpha:g} dropout={self.dropout:g} dora={str(self.dora).lower()}"

    @property
    def is_default(self) -> bool:
        return self == LoraSettings()


@dataclass(frozen=True)
class Quantization:
    """How the frozen base is stored: `none`, `8bit`, or `4bit` (nf4 / fp4, with or without double quantization)."""

    bits: QuantBits = QuantBits.NONE
    quant_type: QuantType = QuantType.NF4
    double_quant: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _choice(QuantBits, self.bits, "quantization"))
        object.__setattr__(self, "quant_type", _choice(QuantType, self.quant_type, "4-bit quantization type"))
        object.__setattr__(self, "double_quant", _flag(self.double_quant, "double_quant"))

    @property
    def on(self) -> bool:
        return self.bits != QuantBits.NONE

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits.value, "type": self.quant_type.value, "double_quant": self.double_quant}

    @classmethod
    def from_dict(cls, data: Any) -> Quantization:
        if not isinstance(data, dict):
            raise PlanError("plan 'quant' must be an object with bits, type and double_quant")
        unknown = set(data) - {"bits", "type", "double_quant"}
        if unknown:
            raise PlanError(f"unknown plan 'quant' field(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(data.get("bits", QuantBits.NONE), data.get("type", QuantType.NF4), data.get("double_quant", True))

    def to_text(self) -> str:
        if self.bits != QuantBits.NF4:
            return f"quant {self.bits}"
        return f"quant {self.bits} type={self.quant_type} double={str(self.double_quant).lower()}"

    def describe(self) -> str:
        """One phrase: 'none', '8-bit (LLM.int8)', '4-bit NF4 with double quantization'."""
        if self.bits == QuantBits.NONE:
            return "none"
        if self.bits == QuantBits.INT8:
            return "8-bit (LLM.int8)"
        return f"4-bit {self.quant_type.value.upper()}" + (" with double quantization" if self.double_quant else "")


# -- the text plan format: `adapter k=v ...`, `quant BITS [type=..] [double=..]`, `lora SEL [r=..] [alpha=..]` --

_TRUE = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _number(text: str, where: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise PlanError(f"{where}: {text!r} is not a number") from None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _pairs(tokens: list[str], allowed: tuple[str, ...], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq or key not in allowed or not value:
            raise PlanError(f"{where}: expected {' '.join(f'{k}=...' for k in allowed)}, got {token!r}")
        out[key] = value
    return out


def settings_from_text(body: str, where: str) -> LoraSettings:
    """`r=128 alpha=256 dropout=0.05 dora=true` (each optional) after the word `adapter`."""
    pairs = _pairs(body.split(), ("r", "alpha", "dropout", "dora"), where)
    kw: dict[str, Any] = {}
    for key in ("r", "alpha", "dropout"):
        if key in pairs:
            kw[key] = _number(pairs[key], where)
    if "dora" in pairs:
        if pairs["dora"].lower() not in _TRUE:
            raise PlanError(f"{where}: dora must be true or false, got {pairs['dora']!r}")
        kw["dora"] = _TRUE[pairs["dora"].lower()]
    try:
        return LoraSettings(**kw)
    except PlanError as err:
        raise PlanError(f"{where}: {err}") from None


def quant_from_text(body: str, where: str) -> Quantization:
    """`4bit type=nf4 double=true`, `8bit` or `none` after the word `quant`."""
    tokens = body.split()
    if not tokens:
        raise PlanError(f"{where}: expected 'quant none|8bit|4bit [type=nf4|fp4] [double=true|false]'")
    pairs = _pairs(tokens[1:], ("type", "double"), where)
    double = pairs.get("double", "true").lower()
    if double not in _TRUE:
        raise PlanError(f"{where}: double must be true or false, got {pairs['double']!r}")
    try:
        return Quantization(tokens[0], pairs.get("type", "nf4"), _TRUE[double])
    except PlanError as err:
        raise PlanError(f"{where}: {err}") from None


def rule_options(words: list[str], where: str) -> tuple[list[str], int | None, float | None]:
    """Split a `lora` line's words into the selector's words and its trailing `r=N` / `alpha=A` options."""
    r = a = None
    while words and (words[-1].startswith("r=") or words[-1].startswith("alpha=")) and len(words) > 1:
        key, _, value = words.pop().partition("=")
        number = _number(value, where)
        if key == "r":
            r = number
        else:
            a = number
    return words, r, a
