"""Adapters in a plan: which nn.Linear layers the `lora` rules wrap, their parameters, and which frozen
weights a quantized base stores in 4 or 8 bits. Torch-free: resolved from the model index alone.

What a `lora SEL` rule adapts: every `torch.nn.Linear` module whose `weight` SEL selects (so `@llm`,
`@llm.layers[-4:]`, `*q_proj*` and `re:...v_proj\\.weight` all adapt the Linear layers they reach; a
selector that reaches only biases, norms or embeddings adapts nothing). The output head is left out
unless the selector is `@lm_head` itself: PEFT's `target_modules="all-linear"` leaves it out too, so
`lora @llm` (or `lora @all`) is PEFT's all-linear restricted to what it selects.

The rules are read in order, as freeze rules are. The base weight under an adapter stays frozen: a lora
rule that reaches a Linear whose weight is trainable at that point (by the plan's base or an earlier
`train` rule) is an error, and so is a later `train` rule that reaches an adapted weight; a layer trains
either fully or through its adapter. A `freeze` rule changes no adapter. A Linear reached by several lora
rules takes the rank and alpha of the last one. Biases stay as the train / freeze rules leave them
(PEFT's bias="none" freezes them all; a `train *.bias` rule after the adapters is PEFT's "lora_only").

With `quant 4bit` or `quant 8bit`, every Linear weight of the language model that the plan leaves frozen
(adapted or not) is stored quantized, except the output head, which transformers leaves out by default
(`get_keys_to_not_convert`). The vision tower and the projector stay in the parameter dtype, as ms-swift
keeps them (`llm_int8_skip_modules`: vision tower, aligner, lm_head) and QLoRA quantizes the LLM; trainable
Linear layers stay in the parameter dtype too (bitsandbytes weights cannot train).

PEFT's naming (adapter "default"): `P.lora_A.default.weight` (r x in), `P.lora_B.default.weight`
(out x r) and, with DoRA, `P.lora_magnitude_vector.default.weight` (out), for the Linear at path P.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from freezelab.errors import SelectorError
from freezelab.index import ModelIndex
from freezelab.index_memo import per_index
from freezelab.lora import LoraSettings, Quantization

if TYPE_CHECKING:
    from freezelab.plans import Plan

LINEAR = "Linear"            # torch.nn.Linear's class name as the index records module types
ADAPTER_NAME = "default"     # PEFT's adapter name when get_peft_model is given none
MAX_SHOWN = 3                # layer paths named in a message


class AdapterError(SelectorError):
    """A lora rule reaches no Linear layer, or a layer that also trains in full."""


@dataclass(frozen=True)
class Linear:
    """One nn.Linear of the model, as the index records it."""

    path: str
    weight: int                # index of its weight in index.params
    bias: int | None
    in_features: int
    out_features: int


@dataclass(frozen=True)
class AdapterTensor:
    name: str                  # PEFT's parameter name under the base model
    shape: tuple[int, ...]
    role: str                  # "A" | "B" | "magnitude"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class AdaptedLayer:
    linear: Linear
    r: int
    alpha: float
    rule: int                  # the (1-based) lora rule that placed it: the last one reaching it

    @property
    def path(self) -> str:
        return self.linear.path

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def tensors(self, dora: bool) -> list[AdapterTensor]:
        p, lin = self.path, self.linear
        out = [AdapterTensor(f"{p}.lora_A.{ADAPTER_NAME}.weight", (self.r, lin.in_features), "A"),
               AdapterTensor(f"{p}.lora_B.{ADAPTER_NAME}.weight", (lin.out_features, self.r), "B")]
        if dora:
            out.append(AdapterTensor(f"{p}.lora_magnitude_vector.{ADAPTER_NAME}.weight", (lin.out_features,),
                                     "magnitude"))
        return out

    def numel(self, dora: bool) -> int:
        lin = self.linear
        return self.r * (lin.in_features + lin.out_features) + (lin.out_features if dora else 0)


@dataclass(frozen=True)
class Adapters:
    """A plan's adapters resolved on one model: the adapted layers in module order, the settings they
    share, and the quantized weights."""

    layers: tuple[AdaptedLayer, ...] = ()
    settings: LoraSettings = field(default_factory=LoraSettings)
    quant: Quantization = field(default_factory=Quantization)
    quantized: tuple[int, ...] = ()   # Linear weights stored quantized (indices into index.params)

    def __bool__(self) -> bool:
        return bool(self.layers)

    @property
    def dora(self) -> bool:
        return self.settings.dora

    @property
    def params(self) -> int:
        """Adapter parameters, as PEFT counts them (all trainable)."""
        return sum(a.numel(self.dora) for a in self.layers)

    def tensors(self) -> list[tuple[AdaptedLayer, AdapterTensor]]:
        return [(a, t) for a in self.layers for t in a.tensors(self.dora)]

    def by_weight(self) -> dict[int, AdaptedLayer]:
        return {a.linear.weight: a for a in self.layers}


# -- the model's Linear layers ------------------------------------------------------------

@per_index
def linears(index: ModelIndex) -> tuple[Linear, ...]:
    """Every nn.Linear with a 2-d weight, in module order (tied: the head owns the embedding's tensor)."""
    out = []
    for m in index.modules:
        if m.type != LINEAR:
            continue
        weight = bias = None
        for i in m.own:
            names = index.params[i].names
            if f"{m.path}.weight" in names:
                weight = i
            elif f"{m.path}.bias" in names:
                bias = i
        if weight is not None and len(index.params[weight].shape) == 2:
            out_features, in_features = index.params[weight].shape
            out.append(Linear(m.path, weight, bias, in_features, out_features))
    return tuple(out)


def output_head(index: ModelIndex) -> str | None:
    heads = index.roots.get("lm_head") or []
    return heads[0] if heads else None


# -- resolving the lora rules -------------------------------------------------------------------

def _shown(paths: Sequence[str]) -> str:
    more = f" and {len(paths) - MAX_SHOWN} more" if len(paths) > MAX_SHOWN else ""
    return ", ".join(paths[:MAX_SHOWN]) + more


def _no_linear(index: ModelIndex, rule: object, n: int, hit: frozenset[int], head: str | None,
               lins: tuple[Linear, ...]) -> AdapterError:
    if head is not None and any(lin.path == head and lin.weight in hit for lin in lins):
        return AdapterError(f"rule {n} ({rule}): the only Linear layer it reaches is the output head {head}, which "
                            "gets an adapter only from `lora @lm_head` (PEFT's all-linear leaves it out too)")
    kinds = sorted({m.type if m.type != LINEAR else "Linear biases"
                    for m in index.modules if m.own and any(i in hit for i in m.own)})
    return AdapterError(f"rule {n} ({rule}): it selects the weight of no nn.Linear layer of {index.name} (only "
                        f"parameters of {' and '.join(kinds) or 'no module'}); LoRA wraps nn.Linear layers: try "
                        "@llm, @llm.layers[-4:], @projector or *q_proj*")


def _already_trained(rule: object, n: int, busy: list[Linear], trained_by: dict[int, int],
                     plan: Plan) -> AdapterError:
    first = trained_by.get(busy[0].weight, 0)
    by = f"rule {first} ({plan.rules[first - 1]})" if first else f"the plan's base ({plan.effective_base})"
    return AdapterError(
        f"rule {n} ({rule}): {len(busy)} of the Linear layers it adapts train in full already ({_shown([b.path for b in busy])}, "
        f"made trainable by {by}); a layer trains either in full or through an adapter: freeze them before "
        "this rule (or start from a frozen base), or leave them out of its selector")


def _trained_after(rule: object, n: int, clash: list[AdaptedLayer], plan: Plan) -> AdapterError:
    first = clash[0].rule
    return AdapterError(
        f"rule {n} ({rule}) trains the weights of {len(clash)} Linear layers that rule {first} "
        f"({plan.rules[first - 1]}) gives adapters ({_shown([a.path for a in clash])}); a layer trains either "
        "in full or through an adapter: narrow one of the two selectors")


def resolve_adapters(index: ModelIndex, plan: Plan, found: Sequence[frozenset[int]],
                     mask: Sequence[bool]) -> Adapters:
    """The plan's adapted layers and quantized weights on `index`, from each rule's matches (`found`)
    and the final trainable `mask`. Raises AdapterError naming the rule that breaks the rules above."""
    from freezelab.plans import Action, Base

    lins = linears(index)
    head = output_head(index)
    running = [plan.effective_base == Base.TRAINABLE] * len(index.params)
    trained_by: dict[int, int] = {}
    placed: dict[str, AdaptedLayer] = {}
    for n, (rule, hit) in enumerate(zip(plan.rules, found), 1):
        if rule.action == Action.LORA:
            targets = [lin for lin in lins if lin.weight in hit and (lin.path != head or rule.selector == "@lm_head")]
            if not targets:
                raise _no_linear(index, rule, n, hit, head, lins)
            busy = [lin for lin in targets if running[lin.weight]]
            if busy:
                raise _already_trained(rule, n, busy, trained_by, plan)
            r = rule.r if rule.r is not None else plan.lora.r
            alpha = rule.alpha if rule.alpha is not None else plan.lora.alpha
            for lin in targets:
                placed[lin.path] = AdaptedLayer(lin, r, alpha, n)
            continue
        on = rule.action == Action.TRAIN
        if on and placed:
            clash = [a for a in placed.values() if a.linear.weight in hit]
            if clash:
                raise _trained_after(rule, n, clash, plan)
        for i in hit:
            running[i] = on
            if on:
                trained_by[i] = n
    layers = tuple(placed[lin.path] for lin in lins if lin.path in placed)
    quantized = tuple(lin.weight for lin in lins if lin.path != head and not mask[lin.weight]
                      and index.params[lin.weight].component == "llm") if plan.quant.on else ()
    return Adapters(layers, plan.lora, plan.quant, quantized)


def adapter_warnings(index: ModelIndex, adapters: Adapters) -> list[str]:
    """Adapters that can never learn (behind the vision feature layer) and an adapted tied head."""
    out = []
    dead = [a for a in adapters.layers if index.params[a.linear.weight].name in index.dead]
    if dead:
        n = sum(a.numel(adapters.dora) for a in dead)
        reason = index.dead[index.params[dead[0].linear.weight].name]
        out.append(f"{len(dead)} adapted Linear layers ({n:,} adapter parameters, e.g. {dead[0].path}) will never "
                   f"get a gradient: {reason}")
    head = output_head(index)
    for a in adapters.layers:
        if a.path == head and index.params[a.linear.weight].aliases:
            out.append(f"the adapted output head {head} shares its weight with the input embeddings (tied): the "
                       "adapter changes only the head, so merging it breaks the tie (PEFT warns about this too)")
    return out
