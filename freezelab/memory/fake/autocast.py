"""The CUDA autocast policy, on top of CPU autocast.

The casts themselves, and the cache of 16-bit copies of fp32 leaf weights, are
done by PyTorch's own autocast machinery (CPU autocast uses the same
`cached_cast` code as CUDA); `CudaAutocastDelta` adds the ops whose policy
differs on CUDA (fp32 for layer_norm / pow / rsqrt / exp ..., fp32 output
dtype for softmax / log_softmax / sum / cumsum, promote, and the few
lower-precision ops CPU autocast does not list). CPU autocast is also what
`torch.utils.checkpoint` saves and restores for the recomputation, and what
`torch.autocast(..., enabled=False)` regions in model code turn off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from freezelab.memory.fake.sdpa import HALF

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
                lambda t: t.float() if _eligible(t) and t.dtype in HALF else t, args, kwargs)
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
