"""What the adapter exports share: the outcome of a LoRA setting, read from a framework's own selection
logic (which base tensors train in full, which Linear layers get adapters with which rank and alpha, the
dropout, DoRA, which weights are stored quantized), and how it differs from the plan's.

An export is exact only when every part of the outcome equals the plan's; the note names each part that
differs, and `differs` counts the parameters treated differently: base tensors trained or not, adapter
parameters added or missing (at the plan's rank), quantized weights stored otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from freezelab.adapters import Adapters, linears
from freezelab.exports.base import Difference, _count, _examples, difference
from freezelab.index import ModelIndex
from freezelab.lora import QuantBits, Quantization

SHOWN = 2


@dataclass(frozen=True)
class LoraOutcome:
    trainable: tuple[bool, ...]                       # base tensors trained in full (index order)
    ranks: tuple[tuple[str, int, float], ...] = ()    # (adapted Linear path, r, alpha), module order
    dropout: float = 0.0
    dora: bool = False
    quantized: frozenset[int] = frozenset()           # weights stored quantized (indices into index.params)
    quant: Quantization = field(default_factory=Quantization)

    @property
    def adapted(self) -> dict[str, tuple[int, float]]:
        return {path: (r, alpha) for path, r, alpha in self.ranks}


def plan_outcome(mask: Sequence[bool], adapters: Adapters) -> LoraOutcome:
    return LoraOutcome(tuple(mask), tuple((a.path, a.r, a.alpha) for a in adapters.layers),
                       adapters.settings.dropout, adapters.dora, frozenset(adapters.quantized), adapters.quant)


def _paths(paths: Sequence[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


def _adapter_numel(index: ModelIndex, paths: Sequence[str], ranks: dict[str, tuple[int, float]], dora: bool) -> int:
    by_path = {lin.path: lin for lin in linears(index)}
    total = 0
    for p in paths:
        lin, r = by_path[p], ranks[p][0]
        total += r * (lin.in_features + lin.out_features) + (lin.out_features if dora else 0)
    return total


def _full_training(index: ModelIndex, diff: Difference) -> list[str]:
    out = []
    if diff.extra:
        out.append(f"also trains {_count(index, diff.extra)} parameters in full that the plan does not "
                   f"({_examples(index, diff.extra)})")
    if diff.missing:
        out.append(f"does not train {_count(index, diff.missing)} parameters the plan trains in full "
                   f"({_examples(index, diff.missing)})")
    return out


def _adapter_phrases(index: ModelIndex, want: LoraOutcome, got: LoraOutcome) -> tuple[list[str], int]:
    w, g = want.adapted, got.adapted
    extra = [p for p in g if p not in w]
    missing = [p for p in w if p not in g]
    other_rank = [p for p in w if p in g and g[p] != w[p]]
    out, n = [], 0
    if extra:
        out.append(f"adds adapters to {len(extra)} Linear layers the plan leaves without ({_paths(extra)})")
        n += _adapter_numel(index, extra, g, got.dora)
    if missing:
        out.append(f"gives no adapter to {len(missing)} Linear layers the plan adapts ({_paths(missing)})")
        n += _adapter_numel(index, missing, w, want.dora)
    if other_rank:
        r, alpha = g[other_rank[0]]
        out.append(f"uses r={r} alpha={alpha:g} on {len(other_rank)} layers where the plan has "
                   f"r={w[other_rank[0]][0]} alpha={w[other_rank[0]][1]:g} ({_paths(other_rank)})")
        n += _adapter_numel(index, other_rank, w, want.dora)
    if (want.ranks or got.ranks) and got.dora != want.dora:
        out.append("uses DoRA" if got.dora else "cannot use DoRA")
    if want.ranks and got.ranks and got.dropout != want.dropout:
        out.append(f"uses dropout {got.dropout:g} (the plan: {want.dropout:g})")
    return out, n


def _weights(n: int) -> str:
    return f"{n} weight" + ("" if n == 1 else "s")


def _quant_phrases(index: ModelIndex, want: LoraOutcome, got: LoraOutcome) -> tuple[list[str], int]:
    out = []
    if want.quantized and got.quantized and (got.quant.bits, got.quant.quant_type, got.quant.double_quant) != \
            (want.quant.bits, want.quant.quant_type, want.quant.double_quant) and want.quant.bits != QuantBits.NONE:
        out.append(f"stores the base as {got.quant.describe()} (the plan: {want.quant.describe()})")
    extra = sorted(got.quantized - want.quantized)
    missing = sorted(want.quantized - got.quantized)
    if extra:
        out.append(f"also quantizes {_weights(len(extra))} the plan keeps ({_examples(index, extra)})")
    if missing:
        out.append(f"keeps {_weights(len(missing))} in 16 bits that the plan quantizes ({_examples(index, missing)})")
    return out, sum(index.numels[i] for i in (*extra, *missing))


def compare(index: ModelIndex, want: LoraOutcome, got: LoraOutcome) -> tuple[list[str], int]:
    """(what differs, as phrases of 'the setting ...'; parameters treated differently)."""
    base = difference(want.trainable, got.trainable)
    phrases = _full_training(index, base)
    adapters, n_adapters = _adapter_phrases(index, want, got)
    quant, n_quant = _quant_phrases(index, want, got)
    return phrases + adapters + quant, base.numel(index) + n_adapters + n_quant


S = TypeVar("S")


def closest(index: ModelIndex, mask: Sequence[bool], adapters: Adapters, settings: Iterable[S],
            outcome: Callable[[ModelIndex, S], LoraOutcome],
            refused: type[Exception]) -> tuple[S, list[str], int] | None:
    """The first setting whose outcome is the plan's, else the one with the fewest differences (then the
    fewest parameters treated differently): (setting, what differs, parameters); settings the framework
    refuses (`refused` raised by `outcome`) are skipped; None when every one is refused."""
    want = plan_outcome(mask, adapters)
    found: tuple[S, list[str], int] | None = None
    for s in settings:
        try:
            phrases, n = compare(index, want, outcome(index, s))
        except refused:
            continue
        if found is None or (len(phrases), n) < (len(found[1]), found[2]):
            found = (s, phrases, n)
        if not phrases:
            break
    return found


def linear_targets(index: ModelIndex, chosen: list[str], refused: type[Exception]) -> list[str]:
    """`chosen`, when every one is an nn.Linear; else `refused` naming the first that is not, as PEFT raises."""
    kinds = {m.path: m.type for m in index.modules}
    bad = [p for p in chosen if kinds[p] != "Linear"]
    if bad:
        raise refused(f"Target module {bad[0]} is not supported.")
    return chosen


def counts_line(index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> str:
    trainable = sum(n for n, on in zip(index.numels, mask) if on)
    line = (f"trains {trainable + adapters.params:,} of {index.total_params + adapters.params:,} parameters "
            f"as PEFT counts them ({adapters.params:,} in adapters on {len(adapters.layers)} Linear layers")
    quant = f"; {len(adapters.quantized)} weights in {adapters.quant.bits}" if adapters.quantized else ""
    return line + quant + ")"
