"""The order of a stage's ops as its tape recorded them: what each op read, made and saved.

`OrderedTape` is the activation `Tape` (freezelab.memory.activations) that also
writes down, op by op, the tensors the op read, the tensors it created, the
ones it saved for its backward (first saver only: a tensor saved by several
ops goes with the earliest, whose backward runs last), the parameters it used
and its transients. `Program` is that record, frozen: what the analytic
estimate's allocation order (`freezelab.memory.allocations`) replays through
the caching allocator. Identical layers share one program.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from freezelab.memory.activations import Tape

OPS = ("linear", "rms_norm", "layer_norm", "act", "mul", "add", "rotary", "attention", "cache_copy", "new")
PASS_THROUGH = frozenset({"add"})   # backward hands the output's gradient to both inputs, allocating nothing
PARAM_ARGS = ("weight", "bias")
OUTPUT_ARGS = ("out", "name")


@dataclass(frozen=True)
class OpRecord:
    kind: str                   # the Tape method that ran
    reads: tuple[str, ...]      # tensors it read (made before it ran)
    makes: tuple[str, ...]      # tensors it created, in order
    saves: tuple[str, ...]      # tensors it was the first to save for its backward
    params: tuple[int, ...]     # parameter indices it used
    fwd_temp: int               # forward bytes beyond what it made, freed before it returns
    bwd_temp: int               # backward bytes beyond the gradients of its tensors, freed before it returns
    fwd_peak: int = 0           # the tape's transient of its forward (what it makes and its temporaries)
    bwd_peak: int = 0           # the tape's transient of its backward (gradients and temporaries)


@dataclass(frozen=True)
class Program:
    """One stage's forward, op by op, with what outlives each op."""

    ops: tuple[OpRecord, ...]
    sizes: dict[str, int]           # bytes of every tensor (512-byte blocks)
    grads: frozenset[str]           # tensors that require grad
    inp: str                        # the stage's input (the previous stage's output)
    out: str                        # the stage's output
    saved: frozenset[str]           # kept for backward
    forward_only: frozenset[str]    # kept until the forward pass ends (autocast's weight cache)
    held: tuple[str, ...] = ()      # kept until the model output is dropped (the KV cache copies; those autograd
                                    # saves too outlive the op's backward)
    dies: tuple[tuple[str, ...], ...] = ()        # per op: what nothing needs after it (see dies_after)
    dies_unsaved: tuple[tuple[str, ...], ...] = ()  # the same when nothing is saved (checkpointing)

    def __post_init__(self) -> None:
        lasting = self.forward_only | set(self.held) | {self.out}
        object.__setattr__(self, "dies", self.dies_after(self.saved | lasting))
        object.__setattr__(self, "dies_unsaved", self.dies_after(frozenset(lasting | {self.inp})))

    @property
    def held_saved(self) -> int:
        """Bytes of the held tensors that autograd saves too (SDPA's k and v, the KV cache's own tensors)."""
        return sum(self.sizes[n] for n in self.held if n in self.saved)

    def with_params(self, mapping: dict[int, int]) -> Program:
        """The same program over other parameters (an identical layer's): each op's parameter indices,
        and the base weights of adapter handles ("A" | "B", weight), through `mapping`."""
        def moved(i: Any) -> Any:
            return (i[0], mapping.get(i[1], i[1])) if isinstance(i, tuple) else mapping.get(i, i)
        return replace(self, ops=tuple(replace(op, params=tuple(moved(i) for i in op.params)) if op.params else op
                                       for op in self.ops))

    def dies_after(self, keep: frozenset[str]) -> tuple[tuple[str, ...], ...]:
        """Per op, the tensors nothing needs after it in the forward (read last there, or made there
        and never read), leaving out those in `keep`."""
        last: dict[str, int] = {}
        for j, op in enumerate(self.ops):
            for n in (*op.makes, *op.reads):
                last[n] = j
        out: list[list[str]] = [[] for _ in self.ops]
        for n, j in last.items():
            if n not in keep:
                out[j].append(n)
        return tuple(tuple(names) for names in out)

    def forward_peak(self, checkpointed: bool, with_input: bool = True) -> int:
        """The most the stage's forward holds at once beyond what was alive before it: its input until
        its last read (unless `with_input` is False), what each op makes (until its last read, or for
        good when kept), each op's temporaries. Checkpointed: nothing is kept but the input."""
        dies = self.dies_unsaved if checkpointed else self.dies
        inp = self.sizes[self.inp]
        alive = inp if with_input else 0
        peak = alive
        for op, gone in zip(self.ops, dies):
            made = sum(self.sizes[n] for n in op.makes)
            peak = max(peak, alive + made + op.fwd_temp)
            alive += made - sum(self.sizes[n] for n in gone if with_input or n != self.inp)
        return peak

    def backward_peak(self, recompute: bool) -> int:
        """The most the stage holds while its backward runs, its saved tensors included and its input
        left out: with `recompute` (a checkpointed layer) the forward first runs again, saving as it
        goes; then op by op in reverse, each op's backward transient on top of what is still saved (an
        op's saved tensors go after its backward). Tensors the model output holds (`held`) are left out:
        they outlive the stage's backward."""
        saved_of = [sum(self.sizes[n] for n in op.saves if n != self.inp and n not in self.held) for op in self.ops]
        saved = sum(saved_of)
        peak = 0
        if recompute:  # the output's gradient waits while the layer replays
            peak = self.forward_peak(checkpointed=False, with_input=False) + self.sizes[self.out]
        for op, size in zip(reversed(self.ops), reversed(saved_of)):
            peak = max(peak, saved + op.bwd_peak)
            saved -= size
        return peak


class _Frame:
    """An op running on an `OrderedTape`, and what it did since its last record."""

    def __init__(self, tape: OrderedTape, kind: str, reads: tuple[str, ...], params: tuple[Any, ...]) -> None:
        self.kind, self.reads, self.params = kind, reads, params
        self.nested = False   # other ops ran inside it (an adapted Linear)
        self.reset(tape)

    def reset(self, tape: OrderedTape) -> None:
        self.made: list[str] = []
        self.fwd_n = self.bwd_n = 0
        self.temp = 0   # transients beside tensors that other records make (DoRA's weight norm)
        self.saved_before = set(tape.saved)

    def empty(self, tape: OrderedTape) -> bool:
        return not self.made and not self.fwd_n and not self.bwd_n and not self.temp and not (tape.saved - self.saved_before)

    def record(self, tape: OrderedTape) -> OpRecord:
        """What it did since its last record: an op of its own, or the part of a composite op between the
        ops inside it (whose parameters those ops carry)."""
        made = tuple(self.made)
        reads = tuple(n for n in self.reads if n not in made)
        made_bytes = sum(tape.t[n].nbytes for n in made)
        grad_bytes = sum(tape.t[n].nbytes for n in (*reads, *made) if tape.t[n].grad)
        saves = tuple(n for n in tape.t if n in tape.saved and n not in self.saved_before)
        kind = self.kind if not self.nested else "part"
        return OpRecord(kind, reads, made, saves, () if self.nested else self.params,
                        max(0, self.fwd_n - made_bytes) + self.temp, max(0, self.bwd_n - grad_bytes), self.fwd_n, self.bwd_n)


class OrderedTape(Tape):
    """A Tape that records its ops in order (see the module docstring). An op made of other ops (PEFT's
    LoRA layer: the base Linear, A, B, casts and sums) records each of them, and what it did between
    them as parts of its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[OpRecord] = []
        self.first_input: str | None = None
        self._frames: list[_Frame] = []

    def input(self, name: str, numel: int, elem: int, grad: bool, width: int) -> str:
        if self.first_input is None:
            self.first_input = name
        return super().input(name, numel, elem, grad, width)

    def _new(self, name: str, numel: int, elem: int, grad: bool, width: int = 1) -> str:
        if self._frames:
            self._frames[-1].made.append(name)
        return super()._new(name, numel, elem, grad, width)

    def _fwd(self, nbytes: int) -> None:
        if self._frames:
            self._frames[-1].fwd_n = max(self._frames[-1].fwd_n, nbytes)
        super()._fwd(nbytes)

    def _bwd(self, nbytes: int) -> None:
        if self._frames:
            self._frames[-1].bwd_n = max(self._frames[-1].bwd_n, nbytes)
        super()._bwd(nbytes)

    def _weight_norm(self, held: int, transient: int) -> None:
        """The layer's other tensors are alive in the replay already: only `held` is a transient here."""
        Tape._fwd(self, transient)
        if self._frames:
            self._frames[-1].temp = max(self._frames[-1].temp, held)

    def hold(self, *names: str) -> None:
        """The model code keeps `names` referenced until here (a Python variable that the next call
        replaces): a pseudo-op that reads them, makes nothing and has no backward."""
        self.records.append(OpRecord("hold", tuple(n for n in names if n in self.t), (), (), (), 0, 0))

    def program(self, out: str, held: tuple[str, ...] = ()) -> Program:
        return Program(tuple(self.records), {n: t.nbytes for n, t in self.t.items()},
                       frozenset(n for n, t in self.t.items() if t.grad), self.first_input or out, out,
                       frozenset(self.saved), frozenset(self.forward_only - self.saved),
                       tuple(n for n in held if n in self.t))

    def _run(self, kind: str, method: Callable[..., str], bound: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        reads = tuple(dict.fromkeys(v for k, v in bound.items()
                                    if isinstance(v, str) and k not in OUTPUT_ARGS and v in self.t))
        params = tuple(v for k, v in bound.items() if k in PARAM_ARGS and v is not None and not isinstance(v, str))
        if self._frames:  # an op inside another: what the outer one did so far is a part of its own
            outer = self._frames[-1]
            if not outer.empty(self):
                self.records.append(outer.record(self))
            outer.nested = True
        frame = _Frame(self, kind, reads, params)
        self._frames.append(frame)
        try:
            result = method(self, *args, **kwargs)
        finally:
            self._frames.pop()
        if not frame.nested or not frame.empty(self):
            self.records.append(frame.record(self))
        if self._frames:
            self._frames[-1].reset(self)
        return result


def _recorded(kind: str, name: str) -> Callable[..., str]:
    method = getattr(Tape, name)
    names = tuple(inspect.signature(method).parameters)[1:]   # after self

    def op(self: OrderedTape, *args: Any, **kwargs: Any) -> str:
        # the arguments by name in the signature's order, as inspect.Signature.bind gives them (5x faster)
        bound = dict(zip(names, args))
        if kwargs:
            unknown = set(kwargs) - set(names[len(args):])
            if unknown:
                raise TypeError(f"{name}() got unexpected keyword arguments {sorted(unknown)}")
            bound.update((n, kwargs[n]) for n in names[len(args):] if n in kwargs)
        return self._run(kind, method, bound, *args, **kwargs)

    op.__name__ = name
    op.__doc__ = method.__doc__
    return op


for _kind in OPS:
    setattr(OrderedTape, _kind, _recorded(_kind, _kind))
OrderedTape.plain_linear = _recorded("linear", "plain_linear")  # type: ignore[method-assign]
