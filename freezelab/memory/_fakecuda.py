"""What a CUDA training step allocates, replayed on fake CPU tensors.

Helpers for `freezelab.memory.simulate`. Nothing here touches a GPU: the model
runs on `FakeTensorMode` tensors whose fake device is "cpu" (a fake "cuda"
device cannot be used on a CPU-only build: autograd's AccumulateGrad asks for
a CUDA device guard and the process aborts). Where PyTorch picks a different
code path on CUDA than on CPU, the CUDA choice is emulated here:

* `TensorLedger` - a TorchDispatchMode that sees every ATen op (forward,
  backward and optimizer), and books each new storage the way the CUDA
  caching allocator does: rounded up to 512 bytes, freed when its last
  reference dies. It keeps a time-ordered log so that the breakdown at the
  peak, and peaks under analytic scalings (sharding), can be computed after
  the run. It also books the cuBLAS / cuBLASLt workspaces PyTorch allocates
  per (thread, stream) on the first GEMM, and the scratch buffers of fused
  attention kernels that the meta kernels do not show.
* `cuda_sdpa` - `F.scaled_dot_product_attention` with CUDA's backend choice
  (flash / memory-efficient / math on sm90), calling the same ATen ops the
  CUDA composite calls, so autograd saves what it saves on a GPU (output +
  logsumexp, not the attention matrix).
* `CudaAutocastDelta` - the CUDA autocast policy on top of CPU autocast. The
  casts themselves, and the cache of 16-bit copies of fp32 leaf weights, are
  done by PyTorch's own autocast machinery (CPU autocast uses the same
  `cached_cast` code as CUDA); this mode adds the ops whose policy differs
  on CUDA (fp32 for layer_norm / pow / rsqrt / exp ..., fp32 output dtype for
  softmax / log_softmax / sum / cumsum, promote, and the few lower-precision
  ops CPU autocast does not list). CPU autocast is also what
  `torch.utils.checkpoint` saves and restores for the recomputation, and
  what `torch.autocast(..., enabled=False)` regions in model code turn off.
* `replay_caching_allocator` - replays the allocation log through a model of
  the CUDA caching allocator (block pools, segment sizes, best-fit with
  splitting) to estimate `max_memory_reserved`.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import operator
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

MiB = 2**20
GRANULE = 512  # kMinBlockSize of c10/cuda/CUDACachingAllocator.cpp: every block is a multiple

# cuBLAS workspace: PyTorch's default CUBLAS_WORKSPACE_CONFIG is ":4096:8" (32 MiB) on sm90
# (H100/H200) and ":4096:2:16:8" (8 MiB + 128 KiB) elsewhere (aten/src/ATen/cuda/CublasHandlePool.cpp).
# It is allocated through the caching allocator, once per (cuBLAS handle, stream); handles are per
# thread, and autograd runs CUDA backward ops on its own device thread, so a training step holds two.
# cuBLASLt (used by addmm with a bias epilogue) has its own workspace per (handle, stream) whose
# default size is CUBLASLT_WORKSPACE_SIZE = 1024 KiB.
CUBLAS_WORKSPACE_SM90 = 4096 * 8 * 1024
CUBLAS_WORKSPACE_OTHER = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLASLT_WORKSPACE = 1024 * 1024

_BLAS_OPS = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
    aten.addbmm.default, aten.addmv.default, aten.mv.default, aten.dot.default,
    aten.vdot.default, aten._addmm_activation.default,
}
_LT_OPS = {aten.addmm.default, aten._addmm_activation.default}
_PRIM_DEVICE = torch.ops.prim.device.default


def _foreach_ops() -> tuple[set[Any], set[Any]]:
    """In-place foreach overloads (return nothing) and out-of-place ones whose outputs are shaped
    and typed like their first list (unary / pointwise with a scalar or a same-typed list)."""
    inplace, like = set(), set()
    same = {"sqrt", "neg", "abs", "exp", "reciprocal", "sign", "mul", "div", "add", "sub", "lerp",
            "addcmul", "addcdiv", "clamp_min", "clamp_max", "maximum", "minimum", "sigmoid"}
    for full in torch._C._dispatch_get_all_op_names():
        if not full.startswith("aten::_foreach_"):
            continue
        name, _, ov = full[len("aten::"):].partition(".")
        try:
            op = getattr(getattr(aten, name), ov or "default")
        except AttributeError:
            continue
        base = name[len("_foreach_"):]
        if base.endswith("_") and not op._schema.returns:
            inplace.add(op)
        elif base in same and ov in ("", "default", "Scalar", "ScalarList", "Tensor"):
            like.add(op)
    return inplace, like


_FOREACH_INPLACE, _FOREACH_LIKE = _foreach_ops()


def rounded(nbytes: int) -> int:
    """Bytes the CUDA caching allocator books for a request of `nbytes` (0 for an empty tensor)."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // GRANULE) * GRANULE


# --------------------------------------------------------------------------------------------
# The ledger
# --------------------------------------------------------------------------------------------

class Entry:
    """One allocation: its size, what it is, and when it lived (ledger clock ticks)."""

    __slots__ = ("nbytes", "cat", "comp", "t0", "t1", "ref", "phase")

    def __init__(self, nbytes: int, cat: str, comp: str, t0: int, phase: str) -> None:
        self.nbytes = nbytes
        self.cat = cat
        self.comp = comp
        self.t0 = t0
        self.t1: int | None = None
        self.ref: Any = None
        self.phase = phase


class TensorLedger(TorchDispatchMode):
    """Books every storage created under it, by category and component.

    Enter it *inside* a FakeTensorMode so that it sees ops before the fake mode
    runs them. The current category/component/phase are set by the caller
    (module hooks, step phases); `classify` re-labels a live tensor later (a
    weight gradient is only known to be one once autograd accumulates it).
    """

    def __init__(self, *, cublas_bytes: int = CUBLAS_WORKSPACE_SM90,
                 cublaslt_bytes: int = CUBLASLT_WORKSPACE) -> None:
        super().__init__()
        self.entries: list[Entry] = []
        self.live: dict[int, Entry] = {}
        self.t = 0
        self.total = 0
        self.phase = "setup"
        self.phase_marks: list[tuple[int, str]] = [(0, "setup")]
        self.category = "activations"
        self.component = "other"
        self.fake_items = False  # answer .item() with 1 (optimizer steps that read norms)
        self.cublas_bytes = cublas_bytes
        self.cublaslt_bytes = cublaslt_bytes
        self._workspaces: set[tuple[str, str]] = set()
        self.peak = 0
        self.peak_t = 0
        self.peak_phase = "setup"
        self.sdpa_backends: dict[str, int] = {}

    # -- clock and totals ------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_marks.append((self.t, phase))

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
        e = Entry(rounded(nbytes), cat, comp or self.component, self.t, self.phase)
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
        """Book `t`'s storage if it is new; return its entry."""
        try:
            st = t.untyped_storage()
        except Exception:  # sparse / opaque tensors: nothing we can book
            return None
        key = st._cdata
        e = self.live.get(key)
        if e is not None:
            return e
        self.t += 1
        e = Entry(rounded(st.nbytes()), cat or self.category, comp or self.component, self.t, self.phase)
        e.ref = weakref.ref(st, lambda r, k=key: self._release(k))
        self.live[key] = e
        self.entries.append(e)
        self._book(e)
        return e

    def entry_of(self, t: torch.Tensor) -> Entry | None:
        return self.live.get(t.untyped_storage()._cdata)

    def classify(self, t: torch.Tensor, cat: str, comp: str | None = None) -> None:
        e = self.entry_of(t)
        if e is not None:
            e.cat = cat
            if comp is not None:
                e.comp = comp

    def exclude(self, t: torch.Tensor) -> None:
        """The tensor does not live on the GPU in the real run (e.g. AdamW's host-side `step`)."""
        e = self.entry_of(t)
        if e is not None and e.nbytes:
            self.total -= e.nbytes
            e.nbytes = 0
            e.cat = "host"

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _PRIM_DEVICE:  # asked ~10^4 times per step by autograd; no allocation
            dev = getattr(args[0], "fake_device", None)
            if dev is not None:
                return dev
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default and self.fake_items:
            return 1.0 if args[0].is_floating_point() else 1
        if func in _FOREACH_INPLACE:
            # in-place on every tensor of a list: no allocation, metadata unchanged; the fake
            # mode would hash hundreds of tensors for nothing
            return None
        if func in _FOREACH_LIKE and args and isinstance(args[0], (list, tuple)) and not kwargs.get("out"):
            outs = [torch.empty_like(t) for t in args[0]]
            for o in outs:
                self.track(o)
            return outs
        if func in _BLAS_OPS:
            self._workspace(func, args)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self.track(out)
        elif isinstance(out, (tuple, list)):
            for o in out:
                if isinstance(o, torch.Tensor):
                    self.track(o)
        scratch = _SCRATCH.get(func)
        if scratch is not None:
            nbytes = scratch(args, kwargs)
            if nbytes:
                e = self.alloc_raw(nbytes, "workspace")
                self.free_raw(e)
        return out

    def _workspace(self, func, args) -> None:
        thread = "autograd" if self.phase.endswith("backward") else "main"
        if (thread, "cublas") not in self._workspaces:
            self._workspaces.add((thread, "cublas"))
            self.alloc_raw(self.cublas_bytes, "workspace", "cublas")
        if func in _LT_OPS and (thread, "cublaslt") not in self._workspaces and _uses_lt(func, args):
            self._workspaces.add((thread, "cublaslt"))
            self.alloc_raw(self.cublaslt_bytes, "workspace", "cublaslt")

    # -- reading the log ---------------------------------------------------------------------
    def alive_at(self, t: int) -> Iterator[Entry]:
        for e in self.entries:
            if e.t0 <= t and (e.t1 is None or e.t1 > t):
                yield e

    def size_of(self, e: Entry, sizes: dict[int, int] | None) -> int:
        if not e.nbytes:
            return 0
        return sizes.get(id(e), e.nbytes) if sizes else e.nbytes

    def breakdown_at(self, t: int, sizes: dict[int, int] | None = None
                     ) -> tuple[dict[str, int], dict[str, int]]:
        """Bytes per category, and per component for activations, of what is alive at tick `t`
        (`sizes`: booked block sizes by id(entry), else the 512-rounded request)."""
        cats: dict[str, int] = {}
        comps: dict[str, int] = {}
        for e in self.alive_at(t):
            n = self.size_of(e, sizes)
            if not n:
                continue
            cats[e.cat] = cats.get(e.cat, 0) + n
            if e.cat == "activations":
                comps[e.comp] = comps.get(e.comp, 0) + n
        return cats, comps

    def phase_at(self, t: int) -> str:
        # a mark (tick, phase) covers the events after `tick`
        i = bisect.bisect_left([m[0] for m in self.phase_marks], t) - 1
        return self.phase_marks[max(i, 0)][1]

    def _events(self, sizes: dict[int, int] | None) -> list[tuple[int, int]]:
        """(tick, +bytes) at each allocation and (tick, -bytes) at its release, in tick order."""
        events: list[tuple[int, int]] = []
        for e in self.entries:
            n = self.size_of(e, sizes)
            if n:
                events.append((e.t0, n))
                if e.t1 is not None:
                    events.append((e.t1, -n))
        events.sort()
        return events

    def window_peak(self, lo: int, hi: int, sizes: dict[int, int] | None = None) -> int:
        """Highest total over ticks in [lo, hi)."""
        events = self._events(sizes)
        cur = best = 0
        for t, d in events:
            if t >= hi:
                break
            cur += d
            if t >= lo:
                best = max(best, cur)
        return best

    def phase_peaks(self, since: int, sizes: dict[int, int] | None = None) -> dict[str, tuple[int, int]]:
        """Highest total in each phase over ticks >= `since`: {phase: (bytes, tick)}."""
        events = self._events(sizes)
        ticks = [m[0] for m in self.phase_marks]
        out: dict[str, tuple[int, int]] = {}
        cur = 0
        for t, d in events:
            cur += d
            if t >= since:
                i = bisect.bisect_left(ticks, t) - 1
                ph = self.phase_marks[max(i, 0)][1]
                if cur > out.get(ph, (-1, 0))[0]:
                    out[ph] = (cur, t)
        return out

    def scaled_peak(self, scale: dict[str, float], since: int,
                    extra: Callable[[str], dict[str, float]] | None = None,
                    sizes: dict[int, int] | None = None) -> tuple[int, int]:
        """Peak over ticks >= `since` of sum(scale[cat] * bytes(cat)) + sum(extra(phase)); returns (bytes, tick)."""
        events: list[tuple[int, int, str]] = []
        for e in self.entries:
            n = self.size_of(e, sizes)
            if not n:
                continue
            events.append((e.t0, n, e.cat))
            if e.t1 is not None:
                events.append((e.t1, -n, e.cat))
        events.sort(key=operator.itemgetter(0))
        marks = self.phase_marks
        mi = 0
        phase = marks[0][1]
        cur = 0.0
        best, best_t = -1.0, since
        i = 0
        n = len(events)
        while i < n:
            t = events[i][0]
            while i < n and events[i][0] == t:
                _, d, c = events[i]
                cur += scale.get(c, 1.0) * d
                i += 1
            while mi + 1 < len(marks) and marks[mi + 1][0] < t:
                mi += 1
                phase = marks[mi][1]
            if t >= since:
                v = cur + (sum(extra(phase).values()) if extra else 0.0)
                if v > best:
                    best, best_t = v, t
        return int(best), best_t


def _uses_lt(func, args) -> bool:
    """Whether CUDA's addmm takes the cuBLASLt bias-epilogue path (addmm_out_cuda_impl's useLtInterface)."""
    try:
        bias, m1, m2 = args[0], args[1], args[2]
        return (bias.dim() == 1 and m1.dim() == 2 and m2.dim() == 2 and bias.shape[0] == m2.shape[1]
                and m1.shape[0] > 1 and m2.shape[1] > 1
                and bias.dtype in (torch.float32, torch.float16, torch.bfloat16))
    except Exception:
        return False


# Scratch that CUDA attention kernels allocate through the caching allocator and free before
# returning; the meta kernels only return the outputs.
def _flash_bwd_scratch(args, kwargs) -> int:
    # FlashAttention-2 mha_bwd (aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp):
    # softmax_d fp32 [B, H, round128(Lq)] and dq_accum fp32 [B, round128(Lq), H, round32(D)];
    # with fewer kv heads also dk/dv expanded to all query heads.
    q, k = args[1], args[2]
    b, h, lq, d = q.shape
    lq_r = -(-lq // 128) * 128
    d_r = -(-d // 32) * 32 if d <= 192 else 256
    n = rounded(b * h * lq_r * 4) + rounded(b * lq_r * h * d_r * 4)
    if k.shape[1] != h:
        n += 2 * rounded(b * k.shape[2] * h * d * q.element_size())
    return n


def _efficient_bwd_scratch(args, kwargs) -> int:
    # mem-efficient (CUTLASS) backward: delta fp32 [B, H, Lq]; gradQ is accumulated in an fp32
    # workspace when the output dtype is 16-bit.
    q = args[1]
    b, h, lq, d = q.shape
    n = rounded(b * h * lq * 4)
    if q.dtype in (torch.float16, torch.bfloat16):
        n += rounded(b * h * lq * d * 4)
    return n


_SCRATCH: dict[Any, Callable[[tuple, dict], int]] = {
    aten._scaled_dot_product_flash_attention_backward.default: _flash_bwd_scratch,
    aten._scaled_dot_product_efficient_attention_backward.default: _efficient_bwd_scratch,
}


# --------------------------------------------------------------------------------------------
# Scaled dot-product attention with CUDA's backend choice
# --------------------------------------------------------------------------------------------

_HALF = (torch.float16, torch.bfloat16)
_TLS = threading.local()  # this thread's active ledger (`ledger`), for counting backend choices


def _autocast_lower(*ts: torch.Tensor | None):
    """Autocast's lower_precision_fp cast of SDPA's inputs (SDPA is on CUDA's lower-precision list)."""
    if not torch.is_autocast_enabled("cpu"):
        return ts
    dt = torch.get_autocast_dtype("cpu")
    return tuple(t.to(dt) if (t is not None and t.is_floating_point() and t.dtype != torch.float64
                              and t.dtype != dt) else t for t in ts)


def cuda_sdpa_backend(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa) -> str:
    """The backend `select_sdp_backend` picks on sm90 for a training step (dense inputs)."""
    d, dk, dv = q.shape[-1], k.shape[-1], v.shape[-1]
    lq, lk = q.shape[-2], k.shape[-2]
    heads_ok = q.shape[-3] == k.shape[-3] == v.shape[-3] or (
        enable_gqa and q.shape[-3] % k.shape[-3] == 0 and k.shape[-3] == v.shape[-3])
    if q.dim() == 4 and heads_ok and lq > 0 and lk > 0:
        if (attn_mask is None and q.dtype in _HALF and d == dk == dv and d <= 256
                and not (is_causal and lq != lk)):
            return "flash"
        align = 8 if q.dtype in _HALF else 4
        if (q.dtype in (*_HALF, torch.float32) and d == dk and d % align == 0 and dv % align == 0):
            return "efficient"
    return "math"


def cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False):
    """`torch.nn.functional.scaled_dot_product_attention` as the CUDA composite runs it.

    On fake CPU tensors the CPU composite would run the math kernel (which saves the
    attention matrix for backward); on an H100 the same call runs FlashAttention-2 or
    the memory-efficient kernel (which save the output and a logsumexp). cuDNN
    attention, when preferred, saves the same (output + softmax stats).
    """
    query, key, value, attn_mask = _autocast_lower(query, key, value, attn_mask)
    backend = cuda_sdpa_backend(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
    led = getattr(_TLS, "ledger", None)
    if led is not None:
        led.sdpa_backends[backend] = led.sdpa_backends.get(backend, 0) + 1
    if backend == "flash":
        d = query.shape[-1]
        if scale is None:
            scale = 1.0 / math.sqrt(d)
        pad = (-d) % 8
        if pad:  # pad_last_dim<8> in the CUDA composite
            query, key, value = (torch.nn.functional.pad(t, (0, pad)) for t in (query, key, value))
        out = aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False,
                                                       scale=scale)[0]
        return out[..., :d] if pad else out
    if backend == "efficient":
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            rep = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(rep, dim=-3)
            value = value.repeat_interleave(rep, dim=-3)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # convert_boolean_attn_mask
                attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(
                    attn_mask.logical_not(), float("-inf"))
            pad = (-attn_mask.shape[-1]) % 16  # preprocess_mask: pad_bias<16>
            if pad:
                attn_mask = torch.nn.functional.pad(attn_mask, (0, pad))[..., :attn_mask.shape[-1]]
            attn_mask = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        compute_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        return aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, compute_lse,
                                                            dropout_p, is_causal, scale=scale)[0]
    return aten._scaled_dot_product_attention_math(query, key, value, attn_mask, dropout_p, is_causal,
                                                   None, scale=scale, enable_gqa=enable_gqa)[0]


# --------------------------------------------------------------------------------------------
# CUDA autocast policy on top of CPU autocast
# --------------------------------------------------------------------------------------------

F = torch.nn.functional
T = torch.Tensor

# at::autocast lists (aten/src/ATen/autocast_mode.h) where CUDA differs from CPU, at the Python
# API level that model code calls.
_LOWER_EXTRA = {torch.addmv, T.addmv, torch.mv, T.mv, torch.addr, T.addr, torch.chain_matmul,
                torch.linalg.multi_dot, torch.einsum}
_FP32 = {
    torch.acos, T.acos, torch.asin, T.asin, torch.cosh, T.cosh, torch.erfinv, T.erfinv,
    torch.exp, T.exp, torch.expm1, T.expm1, torch.log, T.log, torch.log10, T.log10,
    torch.log2, T.log2, torch.log1p, T.log1p, torch.reciprocal, T.reciprocal,
    torch.rsqrt, T.rsqrt, torch.sinh, T.sinh, torch.tan, T.tan, torch.pow, T.pow, T.__pow__,
    T.__rpow__, F.softplus, F.layer_norm, torch.layer_norm, torch.native_layer_norm, F.group_norm,
    torch.group_norm, F.cosine_similarity, F.poisson_nll_loss, F.cosine_embedding_loss, F.nll_loss,
    F.hinge_embedding_loss, F.kl_div, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.mse_loss,
    F.margin_ranking_loss, F.multilabel_margin_loss, F.soft_margin_loss, F.triplet_margin_loss,
    F.multi_margin_loss, F.binary_cross_entropy_with_logits, torch.dist, T.dist, F.pdist,
    torch.cdist, torch.renorm, T.renorm, torch.logsumexp, T.logsumexp, F.interpolate,
    # cross_entropy is not on the list; its decomposition (log_softmax with fp32 dtype, nll_loss
    # in fp32) computes in fp32, which is what casting the input does.
    F.cross_entropy,
}
_FP32_OPT_DTYPE = {F.softmax, torch.softmax, T.softmax, F.log_softmax, torch.log_softmax,
                   T.log_softmax, torch.sum, T.sum, torch.cumsum, T.cumsum, torch.prod, T.prod,
                   torch.cumprod, T.cumprod, torch.linalg.vector_norm, torch.linalg.matrix_norm}
_PROMOTE = {torch.addcdiv, T.addcdiv, torch.addcmul, T.addcmul, torch.atan2, T.atan2, F.bilinear,
            torch.cross, T.cross, torch.dot, T.dot, torch.vdot, T.vdot, F.grid_sample,
            torch.tensordot, torch.scatter_add, T.scatter_add}


def _eligible(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], args, kwargs):
    def m(x):
        if isinstance(x, torch.Tensor):
            return fn(x)
        if isinstance(x, (list, tuple)) and any(isinstance(y, torch.Tensor) for y in x):
            return type(x)(m(y) for y in x)
        return x
    return tuple(m(a) for a in args), {k: m(v) for k, v in kwargs.items()}


class CudaAutocastDelta(TorchFunctionMode):
    """Adds CUDA's autocast policy where it differs from CPU autocast; active only while CPU
    autocast is enabled (so `enabled=False` regions and checkpoint recomputation follow it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        if func in _FP32:
            args, kwargs = _map_tensors(
                lambda t: t.float() if _eligible(t) and t.dtype in _HALF else t, args, kwargs)
        elif func in _FP32_OPT_DTYPE:
            first = args[0] if args else kwargs.get("input")
            if _eligible(first) and kwargs.get("dtype") is None and not _has_positional_dtype(func, args):
                kwargs = dict(kwargs, dtype=torch.float32)
        elif func in _LOWER_EXTRA:
            dt = torch.get_autocast_dtype("cpu")
            args, kwargs = _map_tensors(lambda t: t.to(dt) if _eligible(t) else t, args, kwargs)
        elif func in _PROMOTE:
            ts = [t for t in list(args) + list(kwargs.values()) if _eligible(t)]
            if ts and len({t.dtype for t in ts}) > 1:
                wide = torch.float32 if any(t.dtype == torch.float32 for t in ts) else ts[0].dtype
                args, kwargs = _map_tensors(lambda t: t.to(wide) if _eligible(t) else t, args, kwargs)
        return func(*args, **kwargs)


def _has_positional_dtype(func, args) -> bool:
    return any(isinstance(a, torch.dtype) for a in args[1:])


# --------------------------------------------------------------------------------------------
# Patches (each restored on exit)
# --------------------------------------------------------------------------------------------

_PATCH_LOCK = threading.Lock()
_PATCH_DEPTH = 0
_SAVED: list[tuple[Any, str, Any]] = []


def _is_fake(t: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _fake_aware_sdpa(original: Callable) -> Callable:
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        if not _is_fake(query):  # another thread running a real model: untouched
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return cuda_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    sdpa.__wrapped__ = original
    return sdpa


def _fake_aware_ignore_mask(original: Callable) -> Callable:
    """transformers' `_ignore_causal_mask_sdpa` with "the padding mask is all ones" known.

    The simulated batch has no padding (measure.py passes attention_mask=ones). On a GPU
    transformers checks that the 2D mask is all ones and then runs SDPA with
    is_causal=True and no mask (flash attention). On fake tensors the values are
    unknown, so transformers conservatively builds a 4D mask (which would send SDPA to
    the memory-efficient kernel instead). Only fake masks take this path."""
    def ignore(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size=None):
        if padding_mask is not None and not _is_fake(padding_mask):
            return original(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size)
        if local_attention_size is not None and kv_length >= local_attention_size:
            return False
        if isinstance(q_offset, torch.Tensor):
            return False
        return q_length == 1 or kv_length == q_length or q_offset == 0
    ignore.__wrapped__ = original
    return ignore


@contextlib.contextmanager
def cuda_emulation_installed(ledger: TensorLedger | None = None) -> Iterator[None]:
    """Route SDPA to `cuda_sdpa` and let transformers skip the all-ones padding mask, for fake
    tensors only. Process-wide (transformers looks both up at call time), reference-counted
    so concurrent simulations share one installation, and restored when the last one exits;
    real tensors in other threads keep the original behaviour."""
    global _PATCH_DEPTH
    import transformers.masking_utils as mu

    with _PATCH_LOCK:
        if _PATCH_DEPTH == 0:
            _SAVED[:] = [(torch.nn.functional, "scaled_dot_product_attention",
                          torch.nn.functional.scaled_dot_product_attention),
                         (mu, "_ignore_causal_mask_sdpa", mu._ignore_causal_mask_sdpa)]
            torch.nn.functional.scaled_dot_product_attention = _fake_aware_sdpa(
                torch.nn.functional.scaled_dot_product_attention)
            mu._ignore_causal_mask_sdpa = _fake_aware_ignore_mask(mu._ignore_causal_mask_sdpa)
        _PATCH_DEPTH += 1
    previous = getattr(_TLS, "ledger", None)
    if ledger is not None:
        _TLS.ledger = ledger
    try:
        yield
    finally:
        _TLS.ledger = previous
        with _PATCH_LOCK:
            _PATCH_DEPTH -= 1
            if _PATCH_DEPTH == 0:
                for obj, name, value in _SAVED:
                    setattr(obj, name, value)
                _SAVED.clear()


# --------------------------------------------------------------------------------------------
# CUDA caching allocator replay (for max_memory_reserved)
# --------------------------------------------------------------------------------------------

_SMALL = 1 * MiB          # kSmallSize: requests up to this go to the small pool
_SMALL_BUFFER = 2 * MiB   # kSmallBuffer: segment size for small requests
_LARGE_BUFFER = 20 * MiB  # kLargeBuffer: segment size for requests below kMinLargeAlloc
_MIN_LARGE = 10 * MiB     # kMinLargeAlloc
_ROUND_LARGE = 2 * MiB    # kRoundLarge


@dataclass
class _Block:
    addr: int
    size: int
    seg: int
    small: bool
    free: bool = True
    prev: "_Block | None" = None
    next: "_Block | None" = None


@dataclass
class AllocatorReplay:
    reserved_peak: int = 0          # max over the replay of cudaMalloc'd bytes
    allocated_peak: int = 0         # max of allocated block bytes (includes unsplit remainders)
    allocated_peak_window: int = 0  # same, over the ticks >= `since`
    peak_tick: int = 0              # ledger tick of that peak
    reserved_at_window_peak: int = 0
    segments: int = 0
    booked: dict[int, int] = field(default_factory=dict)  # id(entry) -> block bytes it was given


class _Pool:
    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # sorted (size, addr)
        self.blocks: dict[int, _Block] = {}

    def add(self, b: _Block) -> None:
        bisect.insort(self.free, (b.size, b.addr))
        self.blocks[b.addr] = b

    def remove(self, b: _Block) -> None:
        i = bisect.bisect_left(self.free, (b.size, b.addr))
        del self.free[i]
        del self.blocks[b.addr]

    def best_fit(self, size: int) -> _Block | None:
        i = bisect.bisect_left(self.free, (size, -1))
        if i == len(self.free):
            return None
        return self.blocks[self.free[i][1]]


def replay_caching_allocator(entries: list[Entry], since: int = 0) -> AllocatorReplay:
    """Replay allocations/frees (in ledger-tick order) through the caching allocator's policy.

    Modelled after c10/cuda/CUDACachingAllocator.cpp with default settings (no
    expandable segments, no max_split_size, one stream): requests are rounded to
    512 B; up to 1 MiB they come from the small pool (2 MiB segments), larger ones
    from the large pool (20 MiB segments below 10 MiB, else rounded up to 2 MiB);
    the smallest free block that fits is taken and split when the remainder is
    >= 512 B (small pool) or > 1 MiB (large pool); freed blocks merge with free
    neighbours; segments are never returned (no empty_cache during a step).

    A block that is not split keeps its remainder: `max_memory_allocated` counts
    whole blocks, so the allocated peak here (and `booked`, the block each
    allocation got) includes those remainders of up to 1 MiB per large block.
    """
    events: list[tuple[int, int, Entry]] = []
    for e in entries:
        if not e.nbytes:
            continue
        events.append((e.t0, 1, e))
        if e.t1 is not None:
            events.append((e.t1, 0, e))
    events.sort(key=operator.itemgetter(0))  # one event per tick: ticks are unique
    pools = {True: _Pool(), False: _Pool()}
    where: dict[int, _Block] = {}
    res = AllocatorReplay()
    reserved = allocated = 0
    next_addr = 0
    seg_id = 0
    for t, is_alloc, e in events:
        if is_alloc:
            size = e.nbytes
            small = size <= _SMALL
            pool = pools[small]
            b = pool.best_fit(size)
            if b is None:
                if small:
                    seg = _SMALL_BUFFER
                elif size < _MIN_LARGE:
                    seg = _LARGE_BUFFER
                else:
                    seg = -(-size // _ROUND_LARGE) * _ROUND_LARGE
                seg_id += 1
                b = _Block(next_addr, seg, seg_id, small)
                next_addr += seg + _ROUND_LARGE  # keep segments apart (never adjacent)
                reserved += seg
                res.segments += 1
            else:
                pool.remove(b)
            rem = b.size - size
            if (small and rem >= GRANULE) or (not small and rem > _SMALL):
                r = _Block(b.addr + size, rem, b.seg, b.small, True, b, b.next)
                if b.next is not None:
                    b.next.prev = r
                b.next = r
                b.size = size
                pool.add(r)
            b.free = False
            where[id(e)] = b
            res.booked[id(e)] = b.size
            allocated += b.size
            res.reserved_peak = max(res.reserved_peak, reserved)
            res.allocated_peak = max(res.allocated_peak, allocated)
            if t >= since and allocated > res.allocated_peak_window:
                res.allocated_peak_window = allocated
                res.peak_tick = t
                res.reserved_at_window_peak = reserved
        else:
            b = where.pop(id(e), None)
            if b is None:
                continue
            allocated -= b.size
            pool = pools[b.small]
            b.free = True
            for nb in (b.prev, b.next):
                if nb is not None and nb.free:
                    pool.remove(nb)
                    if nb is b.prev:
                        b.addr, b.size, b.prev = nb.addr, nb.size + b.size, nb.prev
                        if nb.prev is not None:
                            nb.prev.next = b
                    else:
                        b.size, b.next = b.size + nb.size, nb.next
                        if nb.next is not None:
                            nb.next.prev = b
            pool.add(b)
    return res

