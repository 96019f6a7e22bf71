"""The analytic step as the caching allocator sees it: allocations and frees in order, per tensor.

What nvidia-smi shows is the CUDA context plus what the caching allocator has
reserved (cudaMalloc'd), and that depends on the order and the sizes of the
allocations, not only on the peak of their sum: a freed block is kept and
reused only by requests that fit in it, small requests split large free
blocks, and a large transient (the fp32 logits of the loss) that finds its old
block split needs a new segment. So the analytic estimate replays its step
through the allocator model the simulation uses (`caching_allocator`):

* setup: with `workspaces_ready` the cuBLAS / cuBLASLt workspaces of both threads (a process
  that already ran a step, like every measured row after the first of its run); weights; batch;
* two steps, as the protocol runs them: each stage's forward op by op from the
  program its tape recorded (`tape_order`: every tensor it makes, freed after
  its last read unless saved for backward, cached by autocast or held by the
  model output; the vision tower's hidden states until it returns); the loss
  (the fp32 logits, log-softmax); the backward in reverse (gradients of
  tensors and parameters; saved tensors freed after the op that saved them
  first; checkpointed layers replay their forward first); the model output
  dropped; the optimizer's state (made at step 1) and its temporaries;
  `zero_grad(set_to_none=True)`;
* each thread's cuBLAS workspace at its first matrix multiply (the forward's,
  then autograd's at the first backward one), unless ready.

Each program is compiled once per estimate into flat instruction lists over numbered
slots (`_Compiled`), which identical layers share. Pure Python, like all the analytic estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freezelab.memory.caching_allocator import Block, CachingAllocator
from freezelab.memory.cuda_facts import SMALL_BUFFER, SMALL_SIZE
from freezelab.memory.stages import HEAD, PROJECTOR, VISION, Stage
from freezelab.memory.step_tensors import StepTensors
from freezelab.memory.tape_order import PASS_THROUGH, Program

GEMM_OPS = frozenset({"linear"})


@dataclass
class AllocatorFigures:
    reserved: int         # what the caching allocator cudaMalloc'd by the end of step 2
    allocated_peak: int   # the largest allocated total (whole blocks) over both steps

    @property
    def cache(self) -> int:
        """Reserved beyond the allocated peak: free blocks nothing at the peak could use."""
        return max(0, self.reserved - self.allocated_peak)


class _Small:
    """A request of the small pool (up to 1 MiB): only its size is followed (see `_Run`)."""

    __slots__ = ("size", "shares")

    def __init__(self, size: int) -> None:
        self.size, self.shares = size, 0


class _Run:
    """The allocator and the peak it reached.

    Requests up to 1 MiB come from the small pool, which never shares a segment with the large one:
    its 2 MiB segments are counted from the most it held at once (within 2 MiB of a full replay of the
    pool, tens of MiB in all), so only the large pool is replayed block by block."""

    def __init__(self, t: StepTensors) -> None:
        self.t = t
        self.alloc = CachingAllocator()
        self.malloc, self.release = self.alloc.malloc, self.alloc.release
        self.threads: set[str] = set()
        self.peak = 0
        self.small = 0        # bytes of the small pool in use
        self.small_peak = 0

    def new(self, size: int) -> Block | _Small | None:
        if size > SMALL_SIZE:
            b: Block | _Small = self.malloc(size)
        elif size > 0:
            b = _Small(size)
            self.small += size
            if self.small > self.small_peak:
                self.small_peak = self.small
        else:
            return None
        total = self.alloc.allocated + self.small
        if total > self.peak:
            self.peak = total
        return b

    @property
    def reserved(self) -> int:
        return self.alloc.reserved + -(-self.small_peak // SMALL_BUFFER) * SMALL_BUFFER

    @staticmethod
    def share(b: Block | _Small | None) -> Block | _Small | None:
        """One more owner of `b` (a gradient passed to two inputs, a hidden state kept twice)."""
        if b is not None:
            b.shares += 1
        return b

    def drop(self, b: Block | _Small | None) -> None:
        if b is None:
            return
        if b.shares:
            b.shares -= 1
        elif type(b) is _Small:
            self.small -= b.size
        else:
            self.release(b)

    def workspace(self, thread: str, lt: bool = True) -> None:
        """`thread`'s cuBLAS (and cuBLASLt) workspace, at its first matrix multiply; kept for good."""
        if thread not in self.threads:
            self.threads.add(thread)
            self.new(self.t.workspaces[0])
        if lt and thread + "-lt" not in self.threads:
            self.threads.add(thread + "-lt")
            self.new(self.t.workspaces[1])


class _Compiled:
    """A program as instruction lists over numbered slots (one per tensor)."""

    def __init__(self, p: Program, param_grads: dict[int, tuple[str, int]],
                 adapter_grads: dict[Any, tuple[str, tuple[int, ...]]]) -> None:
        slot = {n: i for i, n in enumerate(p.sizes)}
        self.n, self.inp, self.out = len(slot), slot[p.inp], slot[p.out]
        self.sizes = [p.sizes[n] for n in slot]

        def forward(dies: tuple[tuple[str, ...], ...]) -> list[tuple[bool, int, tuple[int, ...], tuple[int, ...]]]:
            return [(op.kind in GEMM_OPS, op.fwd_temp, tuple(slot[n] for n in op.makes),
                     tuple(slot[n] for n in dies[j])) for j, op in enumerate(p.ops)]

        self.forward, self.forward_unsaved = forward(p.dies), forward(p.dies_unsaved)
        saved = [n for n in p.saved if n not in p.held]   # the held ones go with the model output
        self.saved = tuple(slot[n] for n in saved)
        self.saved_bytes = sum(p.sizes[n] for n in saved)
        self.forward_only = tuple(slot[n] for n in p.forward_only)
        self.held = tuple(slot[n] for n in p.held)
        self.backward = []
        for op in reversed(p.ops):
            runs = any(n in p.grads for n in op.makes)
            grads = tuple(param_grads[i][1] for i in op.params if i in param_grads) if runs else ()
            if runs:
                grads += tuple(size for i in op.params if i in adapter_grads for size in adapter_grads[i][1])
            ins = tuple((slot[n], op.kind in PASS_THROUGH) for n in op.reads if n in p.grads) if runs else ()
            self.backward.append((runs, op.kind in GEMM_OPS, op.bwd_temp, tuple(slot[n] for n in op.makes),
                                  grads, ins, tuple(slot[n] for n in op.saves if n not in p.held)))


def figures(stages: list[Stage], tensors: StepTensors) -> AllocatorFigures:
    """Run setup and two steps through the caching allocator model."""
    run = _Run(tensors)
    if tensors.workspaces_ready:  # both threads' cuBLAS and the forward's cuBLASLt (made by an earlier step)
        run.workspace("main")
        run.workspace("autograd", lt=False)
    for size in (*tensors.weights, *tensors.inputs):
        run.new(size)
    compiled: dict[int, _Compiled] = {}
    for s in stages:
        if s.program is not None and id(s.program) not in compiled:
            compiled[id(s.program)] = _Compiled(s.program, tensors.param_grads, tensors.adapter_grads)
    for step in (1, 2):
        _step(run, stages, compiled, first=step == 1)
    return AllocatorFigures(run.reserved, run.peak)


def _step(run: _Run, stages: list[Stage], compiled: dict[int, _Compiled], first: bool) -> None:
    fwd = _Forward(run, compiled)
    for pos, s in enumerate(stages):
        fwd.stage(pos, s)
    fwd.end_of_forward()
    backward = [(pos, s) for pos, s in enumerate(stages) if s.backward]
    grads: list[Block | None] = []
    if backward:
        bwd = _Backward(run, fwd, grads)
        for pos, s in reversed(backward):
            bwd.stage(pos, s)
        run.drop(bwd.grad_stream)
    fwd.drop_output()
    if not backward:
        return
    if first:
        for tensor in run.t.state:
            for size in tensor:
                run.new(size)
    if run.t.step_temps_serial:
        for size in run.t.step_temps:
            run.drop(run.new(size))
    else:
        for b in [run.new(size) for size in run.t.step_temps]:
            run.drop(b)
    for b in grads:
        run.drop(b)


def _run_ops(run: _Run, c: _Compiled, ops: list[tuple[bool, int, tuple[int, ...], tuple[int, ...]]],
             loc: list[Block | None], spared: int | None = None, thread: str | None = None) -> None:
    """A program's forward op by op: each op's transient, what it makes, then what nothing needs after
    it (all but slot `spared`); `thread`: whose cuBLAS workspaces the first matrix multiply makes."""
    new, drop, sizes, threads = run.new, run.drop, c.sizes, run.threads
    for gemm, temp, makes, dies in ops:
        if gemm and thread is not None and thread + "-lt" not in threads:
            run.workspace(thread)
        t = new(temp) if temp else None
        for i in makes:
            loc[i] = new(sizes[i])
        if t is not None:
            drop(t)
        for i in dies:
            if i != spared:
                drop(loc[i])
                loc[i] = None


Kept = tuple[list[Block | None], Block | None]   # a stage's saved tensors (by slot) and its extra kept bytes


class _Forward:
    """The forward pass stage by stage; keeps what the backward and the model output need."""

    def __init__(self, run: _Run, compiled: dict[int, _Compiled]) -> None:
        self.run, self.compiled = run, compiled
        self.stream: Block | None = None                     # the latest stage's output
        self.kept: dict[int, Kept] = {}                      # stage position -> what its backward needs
        self.forward_only: list[Block | None] = []
        self.output: list[Block | None] = []                 # held by the model output until `del out`
        self.hidden_states: list[Block | None] = []          # the vision tower's, until it returns
        self.image_features = 0                              # bytes of the projector's output
        self.image_grad = False                              # does the projector's backward run
        self.log_probs: Block | None = None

    def stage(self, pos: int, s: Stage) -> None:
        if s.program is not None:
            self._program(pos, s, self.compiled[id(s.program)])
        elif s.name == "loss":
            self._loss(s)
        elif s.name == "vision.post":
            self._vision_output(s)
        else:
            self._embeddings(pos, s)

    def _program(self, pos: int, s: Stage, c: _Compiled) -> None:
        run = self.run
        loc: list[Block | None] = [None] * c.n
        loc[c.inp] = run.new(c.sizes[c.inp]) if s.component == PROJECTOR else self.stream  # a fresh slice
        ckpt = s.checkpointed
        _run_ops(run, c, c.forward_unsaved if ckpt else c.forward, loc,
                 spared=c.inp if s.component == HEAD else None, thread="main")
        if s.component == HEAD and loc[c.inp] is not None and c.inp not in c.saved:
            self.forward_only.append(loc[c.inp])  # the last hidden state, held until the forward returns
        keep = (c.inp,) if ckpt else c.saved
        saved = [loc[i] for i in keep]
        extra = run.new(s.kept - (c.sizes[c.inp] if ckpt else c.saved_bytes))  # beyond the program: rotary tables
        if s.backward:
            self.kept[pos] = (saved, extra)
        else:
            self.output.extend((*saved, extra))
        self.forward_only.extend(loc[i] for i in c.forward_only)
        self.output.extend(loc[i] for i in c.held)
        self._stage_output(s, c, loc[c.out])

    def _stage_output(self, s: Stage, c: _Compiled, out: Block | None) -> None:
        if s.component in (PROJECTOR, HEAD):  # image features and logits: held by the model output
            self.output.append(out)
            self.stream = None
        else:
            self.stream = out
        if s.component == PROJECTOR:
            self.image_features, self.image_grad = c.sizes[c.out], s.backward
        elif s.component == VISION:
            self.hidden_states.append(self.run.share(out))

    def _vision_output(self, s: Stage) -> None:
        """The tower returns: the hidden states it returns stay with the model output, the others go;
        the projector reads its features from a fresh copy."""
        run = self.run
        last = self.hidden_states[-1] if self.hidden_states else None
        unit = last.size if last is not None else 0
        keep = min(len(self.hidden_states), s.held // unit) if unit else 0
        cut = len(self.hidden_states) - keep
        for b in self.hidden_states[:cut]:
            run.drop(b)
        self.output.extend(self.hidden_states[cut:])
        self.output.append(run.new(s.held - keep * unit))
        self.hidden_states = []
        run.drop(self.stream)
        self.stream = None

    def _embeddings(self, pos: int, s: Stage) -> None:
        """The patch embedding (conv, flatten, + positions: three tensors of the stream's size) or the
        LLM's (lookup, then the image features scattered into a new tensor)."""
        run = self.run
        vision = s.component == VISION
        parts = 3 if vision else (2 if self.image_features else 1)
        size = s.fwd_extra // (3 if vision else 2)
        temps = [run.new(size) for _ in range(parts - 1)]
        out = run.new(size)
        for b in temps:
            run.drop(b)
        self.stream = out
        if vision:
            self.hidden_states.append(run.share(out))
        self.kept[pos] = ([], run.new(s.kept) if s.backward else None)

    def _loss(self, s: Stage) -> None:
        """transformers' ForCausalLMLoss: logits.float(), log_softmax (saved for backward), nll_loss."""
        run, fp32 = self.run, self.run.t.logits_fp32
        upcast = run.new(fp32) if run.t.upcast else None
        log_probs = run.new(fp32)
        run.drop(upcast)
        if s.backward:
            self.log_probs = log_probs
        else:
            run.drop(log_probs)

    def end_of_forward(self) -> None:
        """Leaving the autocast region drops its weight cache."""
        for b in self.forward_only:
            self.run.drop(b)
        self.forward_only = []
        self.run.drop(self.stream)
        self.stream = None

    def drop_output(self) -> None:
        """`del out`: the logits, the KV cache, the returned hidden states and what only they kept."""
        for saved, extra in self.kept.values():
            for b in (*saved, extra):
                self.run.drop(b)
        for b in (*self.output, *self.hidden_states):
            self.run.drop(b)
        self.kept, self.output, self.hidden_states = {}, [], []


class _Backward:
    """The backward pass, stage by stage in reverse."""

    def __init__(self, run: _Run, fwd: _Forward, grads: list[Block | None]) -> None:
        self.run, self.fwd, self.grads = run, fwd, grads
        self.grad_stream: Block | None = None   # the gradient of the input of the stage just done

    def stage(self, pos: int, s: Stage) -> None:
        if s.name == "loss":
            self._loss()
        elif s.program is not None:
            self._program(pos, s, self.fwd.compiled[id(s.program)])
        else:
            self._coarse(pos, s)

    def _loss(self) -> None:
        """nll_loss' gradient, then log_softmax's; log-softmax's output goes."""
        run, fp32 = self.run, self.run.t.logits_fp32
        nll = run.new(fp32)
        self.grad_stream = run.new(fp32)
        run.drop(nll)
        run.drop(self.fwd.log_probs)
        self.fwd.log_probs = None

    def _coarse(self, pos: int, s: Stage) -> None:
        """Stages without a program: their own parameters' gradients (a tied embedding's is made by
        lm_head), their transient, and for the LLM's embeddings the image features' gradient."""
        run = self.run
        incoming, self.grad_stream = self.grad_stream, None
        for i in s.grad_params:
            owner, size = run.t.param_grads.get(i, ("", 0))
            if owner == s.name:
                self.grads.append(run.new(size))
            for role in ("A", "B"):
                owner, sizes = run.t.adapter_grads.get((role, i), ("", ()))
                if owner == s.name:
                    self.grads += [run.new(size) for size in sizes]
        run.drop(run.new(s.bwd_extra))
        if s.name == "llm.embeddings" and self.fwd.image_grad:  # masked_scatter's backward
            self.grad_stream = run.new(self.fwd.image_features)
        run.drop(incoming)
        _, extra = self.fwd.kept.pop(pos, ([], None))
        run.drop(extra)

    def _program(self, pos: int, s: Stage, c: _Compiled) -> None:
        run = self.run
        saved, extra = self.fwd.kept.pop(pos, ([], None))
        loc: list[Block | None] = [None] * c.n
        if s.checkpointed:
            loc[c.inp] = saved[0] if saved else None
            run.workspace("autograd", lt=run.t.ckpt)
            self._recompute(c, loc)
        else:
            for i, b in zip(c.saved, saved):
                loc[i] = b
        grad: list[Block | None] = [None] * c.n
        incoming, self.grad_stream = self.grad_stream, None
        if (s.component == HEAD and run.t.upcast) or incoming is None or incoming.size < c.sizes[c.out]:
            # the fp32 gradient cast back to the logits dtype, or a slice's: zeros of the full size
            cast = run.new(c.sizes[c.out])
            run.drop(incoming)
            incoming = cast
        grad[c.out] = incoming
        drop, do = run.drop, self._op
        for op in c.backward:
            if op[0]:
                do(c, op, grad)
            for i in op[6]:
                drop(loc[i])
                loc[i] = None
        for b in (*loc, extra):
            run.drop(b)
        self.grad_stream, grad[c.inp] = grad[c.inp], None
        for b in grad:
            run.drop(b)

    def _op(self, c: _Compiled, op: tuple, grad: list[Block | None]) -> None:
        run = self.run
        new, drop = run.new, run.drop
        _, gemm, temp, makes, params, ins, _ = op
        if gemm and "autograd" not in run.threads:
            run.workspace("autograd", lt=False)
        outs = [grad[i] for i in makes if grad[i] is not None]
        for i in makes:
            grad[i] = None
        t = new(temp) if temp else None
        for size in params:
            self.grads.append(new(size))
        for i, passed in ins:
            g = run.share(outs[0]) if passed and outs else new(c.sizes[i])
            if grad[i] is not None:
                drop(g)   # added into the gradient already there
            else:
                grad[i] = g
        if t is not None:
            drop(t)
        for g in outs:
            drop(g)

    def _recompute(self, c: _Compiled, loc: list[Block | None]) -> None:
        """A checkpointed layer's forward again, this time saving for its backward; its output goes."""
        run = self.run
        inp = loc[c.inp]
        run.share(inp)
        _run_ops(run, c, c.forward, loc)
        run.drop(loc[c.out])
        loc[c.out] = None
        run.drop(inp)
