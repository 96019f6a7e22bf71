"""The tensor ledger: every storage a fake training step creates, booked as the CUDA caching
allocator books it, with what it is for and who made it.

A `TorchDispatchMode` that sees every ATen op (forward, backward and optimizer)
and books each new storage rounded up to the allocator's 512-byte blocks,
freed when its last reference dies. It keeps a time-ordered log (one tick per
allocation or free) so that the breakdown at the peak, and peaks under
analytic scalings (sharding), can be computed after the run
(`freezelab.memory.fake.log`). It also books the cuBLAS / cuBLASLt workspaces
PyTorch allocates per (thread, stream) on the first GEMM, and the scratch
buffers of fused attention kernels that the meta kernels do not show.
"""

from __future__ import annotations

import weakref
from enum import StrEnum
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from freezelab.memory.cuda_facts import CUBLASLT_WORKSPACE, MEASURED_ARCH, cublas_workspace, rounded
from freezelab.memory.fake.concrete import known_mask_indices, run_real, runs_for_real
from freezelab.memory.fake.ops import BLAS_OPS, FOREACH_INPLACE, FOREACH_LIKE, PRIM_DEVICE, uses_cublaslt
from freezelab.memory.fake.sdpa import BACKWARD_SCRATCH
from freezelab.memory.result import Category, Phase

aten = torch.ops.aten


class Label(StrEnum):
    """Who an allocation is charged to. For activations these are the keys of the simulated
    estimate's `activations_by_component`."""

    VISION = "vision"          # made inside the vision tower (or for its gradients)
    PROJECTOR = "projector"
    LLM = "llm"                # inside the language model
    LM_HEAD = "lm_head"        # inside the output head, and the loss after it
    INPUTS = "inputs"          # the batch
    KV_CACHE = "kv_cache"      # the KV cache the model output holds
    OUTPUTS = "outputs"        # other tensors only the model output holds (returned hidden states)
    OTHER = "other"            # anything outside the component modules (masks, rotary tables, ...)
    BUFFERS = "buffers"        # non-parameter buffers (weights category)
    OPTIMIZER = "optimizer"    # optimizer state and the step's temporaries
    CUBLAS = "cublas"          # a cuBLAS workspace
    CUBLASLT = "cublaslt"      # a cuBLASLt workspace


class Entry:
    """One allocation: its size, what it is, and when it lived (ledger clock ticks)."""

    __slots__ = ("nbytes", "cat", "comp", "t0", "t1", "ref", "phase")

    def __init__(self, nbytes: int, cat: Category, comp: Label, t0: int, phase: Phase) -> None:
        self.nbytes = nbytes
        self.cat = cat
        self.comp = comp
        self.t0 = t0
        self.t1: int | None = None
        self.ref: Any = None
        self.phase = phase


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose storage holds `t`'s data on this rank: a DTensor's local shard, else `t`."""
    return getattr(t, "_local_tensor", t)


class TensorLedger(TorchDispatchMode):
    """Books every storage created under it, by category and label.

    Enter it *inside* a FakeTensorMode so that it sees ops before the fake mode
    runs them. The current category / label / phase are set by the caller
    (module hooks, step phases); `classify` re-labels a live tensor later (a
    weight gradient is only known to be one once autograd accumulates it).
    """

    def __init__(self, *, cublas_bytes: int = cublas_workspace(MEASURED_ARCH),
                 cublaslt_bytes: int = CUBLASLT_WORKSPACE) -> None:
        super().__init__()
        self.entries: list[Entry] = []
        self.live: dict[int, Entry] = {}
        self.t = 0
        self.total = 0
        self.phase = Phase.SETUP
        self.phase_marks: list[tuple[int, Phase]] = [(0, Phase.SETUP)]
        self._category = Category.ACTIVATIONS
        self._component = Label.OTHER
        self.fake_items = False  # answer .item() with 1 (optimizer steps that read norms)
        self.cublas_bytes = cublas_bytes
        self.cublaslt_bytes = cublaslt_bytes
        self._workspaces: set[tuple[str, Label]] = set()
        self.peak = 0
        self.peak_t = 0
        self.peak_phase = Phase.SETUP
        self.sdpa_backends: dict[str, int] = {}

    # -- what new allocations are charged to ---------------------------------------------
    @property
    def category(self) -> Category:
        return self._category

    @category.setter
    def category(self, value: str) -> None:
        self._category = Category(value)

    @property
    def component(self) -> Label:
        return self._component

    @component.setter
    def component(self, value: str) -> None:
        self._component = Label(value)

    # -- clock and totals ------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        self.phase = Phase(phase)
        self.phase_marks.append((self.t, self.phase))

    def reset_peak(self) -> None:
        self.peak = self.total
        self.peak_t = self.t
        self.peak_phase = self.phase

    def _book(self, e: Entry) -> None:
        self.total += e.nbytes
        if self.total > self.peak:
            self.peak = self.total
            self.peak_t = self.t
            self.peak_phase = self.phase

    def alloc_raw(self, nbytes: int, cat: str, comp: str | None = None) -> Entry:
        """Book an allocation that has no tensor here (library workspace or scratch)."""
        self.t += 1
        e = Entry(rounded(nbytes), Category(cat), Label(comp) if comp else self._component, self.t, self.phase)
        self.entries.append(e)
        self._book(e)
        return e

    def free_raw(self, e: Entry) -> None:
        if e.t1 is None:
            self.t += 1
            e.t1 = self.t
            self.total -= e.nbytes

    def _release(self, key: int, _ref: Any = None) -> None:
        e = self.live.pop(key, None)
        if e is not None:
            self.free_raw(e)

    def track(self, t: torch.Tensor, cat: str | None = None, comp: str | None = None) -> Entry | None:
        """Book `t`'s storage if it is new; return its entry. A DTensor (a sharded run) is booked by the
        shard it holds."""
        try:
            st = _local(t).untyped_storage()
        except Exception:  # sparse / opaque tensors: nothing we can book
            return None
        key = st._cdata
        e = self.live.get(key)
        if e is not None:
            return e
        self.t += 1
        e = Entry(rounded(st.nbytes()), Category(cat) if cat else self._category,
                  Label(comp) if comp else self._component, self.t, self.phase)
        e.ref = weakref.ref(st, lambda r, k=key: self._release(k))
        self.live[key] = e
        self.entries.append(e)
        self._book(e)
        return e

    def resized(self, st: torch.UntypedStorage, cat: str | None = None, comp: str | None = None) -> None:
        """A storage changed size in place (FSDP2 frees and re-allocates its unsharded parameters this
        way, with `UntypedStorage.resize_`, which no dispatch mode sees): the old block is freed and, when
        the new size is not zero, a new one booked. A storage resized to nothing stays known (size 0)."""
        key = st._cdata
        old = self.live.pop(key, None)
        if old is None:
            return  # not booked here: another run's storage, or one made before the ledger
        if old.nbytes:
            self.free_raw(old)
        new = Entry(rounded(st.nbytes()), Category(cat) if cat else old.cat, Label(comp) if comp else old.comp,
                    self.t, self.phase)
        new.ref = old.ref
        self.live[key] = new
        if new.nbytes:
            self.t += 1
            new.t0 = self.t
            self.entries.append(new)
            self._book(new)

    def entry_of(self, t: torch.Tensor) -> Entry | None:
        return self.live.get(_local(t).untyped_storage()._cdata)

    def classify(self, t: torch.Tensor, cat: str, comp: str | None = None) -> None:
        e = self.entry_of(t)
        if e is not None:
            e.cat = Category(cat)
            if comp is not None:
                e.comp = Label(comp)

    def exclude(self, t: torch.Tensor) -> None:
        """The tensor does not live on the GPU in the real run (e.g. AdamW's host-side `step`)."""
        e = self.entry_of(t)
        if e is not None and e.nbytes:
            self.total -= e.nbytes
            e.nbytes = 0

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is PRIM_DEVICE:  # asked ~10^4 times per step by autograd; no allocation
            dev = getattr(args[0], "fake_device", None)
            if dev is not None:
                return dev
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default and self.fake_items:
            return 1.0 if args[0].is_floating_point() else 1
        if func in FOREACH_INPLACE:
            # in-place on every tensor of a list: no allocation, metadata unchanged; the fake
            # mode would hash hundreds of tensors for nothing
            return None
        if func in FOREACH_LIKE and args and isinstance(args[0], (list, tuple)) and not kwargs.get("out"):
            outs = [torch.empty_like(t) for t in args[0]]
            for o in outs:
                self.track(o)
            return outs
        if func in BLAS_OPS:
            self._workspace(func, args)
        if runs_for_real(func, args, kwargs):  # integer bookkeeping on real ids / grids (concrete)
            out = run_real(func, args, kwargs)
        else:
            out = func(*known_mask_indices(func, args), **kwargs)
        self._track_outputs(out)
        scratch = BACKWARD_SCRATCH.get(func)
        if scratch is not None:
            nbytes = scratch(args, kwargs)
            if nbytes:
                self.free_raw(self.alloc_raw(nbytes, Category.WORKSPACE))
        return out

    def _track_outputs(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self.track(out)
        elif isinstance(out, (tuple, list)):
            for o in out:
                if isinstance(o, torch.Tensor):
                    self.track(o)

    def _workspace(self, func, args) -> None:
        """cuBLAS workspaces are per (handle, stream) and handles per thread: the forward's main
        thread and autograd's device thread each allocate one on their first GEMM."""
        thread = "autograd" if self.phase is Phase.BACKWARD else "main"
        if (thread, Label.CUBLAS) not in self._workspaces:
            self._workspaces.add((thread, Label.CUBLAS))
            self.alloc_raw(self.cublas_bytes, Category.WORKSPACE, Label.CUBLAS)
        if (thread, Label.CUBLASLT) not in self._workspaces and uses_cublaslt(func, args):
            self._workspaces.add((thread, Label.CUBLASLT))
            self.alloc_raw(self.cublaslt_bytes, Category.WORKSPACE, Label.CUBLASLT)
