"""Counts and the module tree under a trainable mask.

Every count is a sum over unique tensors, so a tied lm_head counts once and
totals equal `sum(p.numel() for p in model.parameters() if p.requires_grad)`.
On the index of an adapted model (`Resolution.adapted`) the adapter tensors
count too, as PEFT counts them: totals are base plus adapters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from freezelab.components import Part
from freezelab.index import ModelIndex, ModuleInfo
from freezelab.index_memo import per_index

@dataclass(frozen=True)
class Counts:
    total: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def state(self) -> str:
        if self.total == 0:
            return "empty"
        if self.trainable == 0:
            return "frozen"
        return "trainable" if self.trainable == self.total else "partial"

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "trainable": self.trainable, "frozen": self.frozen}


def count(index: ModelIndex, mask: list[bool], indices: Any = None) -> Counts:
    numels = index.numels
    chosen = range(len(numels)) if indices is None else indices
    total = trainable = 0
    for i in chosen:
        total += numels[i]
        if mask[i]:
            trainable += numels[i]
    return Counts(total, trainable)


def _roots_params(index: ModelIndex, key: str) -> set[int]:
    out: set[int] = set()
    for path in index.roots.get(key, []):
        if path in index.module_by_path:
            out.update(index.module_by_path[path].params)
        elif path in index.by_name:  # a bare parameter root (LLaVA-NeXT's image_newline)
            out.add(index.by_name[path])
    return out


def component_counts(index: ModelIndex, mask: list[bool]) -> dict[str, Counts]:
    """vision / projector / llm partition the model; lm_head and embeddings are parts of llm."""
    out = {c: count(index, mask, index.component_params(c)) for c in ("vision", "projector", "llm")}
    for key in ("lm_head", "embeddings"):
        out[key] = count(index, mask, sorted(_roots_params(index, key)))
    return out


@dataclass(frozen=True)
class TreeRow:
    path: str
    name: str          # last segment, or the class name for the root
    type: str
    depth: int
    own: int           # parameters registered directly on this module
    total: int
    trainable: int
    state: str         # trainable | frozen | partial | empty
    dtype: str
    component: str
    layer: int | None
    tied: str          # "" or what the module's weight is tied to
    children: int
    adapter: int = 0   # adapter parameters in its subtree (LoRA A / B, DoRA magnitude)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tie_note(index: ModelIndex, m: ModuleInfo) -> str:
    notes = []
    for i in m.own:
        p = index.params[i]
        if p.aliases:
            others = [n for n in p.names if not n.startswith(m.path + ".") or not m.path]
            notes.append("tied with " + ", ".join(others))
    return "; ".join(notes)


@per_index
def adapter_tensors(index: ModelIndex) -> frozenset[int]:
    """The adapter tensors of an adapted index (none in a base index)."""
    return frozenset(i for i, p in enumerate(index.params) if p.part == Part.ADAPTER)


def row(index: ModelIndex, mask: list[bool], m: ModuleInfo) -> TreeRow:
    c = count(index, mask, m.params)
    extra = adapter_tensors(index)
    dtypes = {index.params[i].dtype for i in m.params}
    return TreeRow(path=m.path, name=m.path.rpartition(".")[2] if m.path else m.type, type=m.type,
                   depth=m.depth, own=sum(index.numels[i] for i in m.own), total=c.total,
                   trainable=c.trainable, state=c.state,
                   dtype=dtypes.pop() if len(dtypes) == 1 else ("mixed" if dtypes else ""),
                   component=m.component, layer=m.layer, tied=_tie_note(index, m), children=len(m.children),
                   adapter=sum(index.numels[i] for i in m.params if i in extra) if extra else 0)


def tree(index: ModelIndex, mask: list[bool], depth: int | None = None) -> list[TreeRow]:
    """Every module in registration order, down to `depth` (None: all)."""
    return [row(index, mask, m) for m in index.modules if depth is None or m.depth <= depth]


def summary(index: ModelIndex, mask: list[bool]) -> dict[str, Any]:
    """Totals (base plus adapters on an adapted index), the adapter and base parts, and per component."""
    total = count(index, mask)
    adapter = sum(index.numels[i] for i in adapter_tensors(index))
    return {
        "total_params": total.total,
        "trainable_params": total.trainable,
        "frozen_params": total.frozen,
        "adapter_params": adapter,
        "base_params": total.total - adapter,
        "components": {k: v.to_dict() for k, v in component_counts(index, mask).items()},
    }
