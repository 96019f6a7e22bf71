"""ATen ops the ledger treats specially: foreach ops (booked without running them) and the
BLAS ops that make PyTorch allocate a cuBLAS / cuBLASLt workspace on a GPU."""

from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten

BLAS_OPS = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
    aten.addbmm.default, aten.addmv.default, aten.mv.default, aten.dot.default,
    aten.vdot.default, aten._addmm_activation.default,
}
_LT_OPS = {aten.addmm.default, aten._addmm_activation.default}
PRIM_DEVICE = torch.ops.prim.device.default

# Out-of-place foreach ops whose outputs are shaped and typed like their first list.
_SAME_SHAPED = {"sqrt", "neg", "abs", "exp", "reciprocal", "sign", "mul", "div", "add", "sub", "lerp",
                "addcmul", "addcdiv", "clamp_min", "clamp_max", "maximum", "minimum", "sigmoid"}


def _foreach_ops() -> tuple[set[Any], set[Any]]:
    """In-place foreach overloads (return nothing) and out-of-place ones whose outputs are shaped
    and typed like their first list (unary / pointwise with a scalar or a same-typed list)."""
    inplace, like = set(), set()
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
        elif base in _SAME_SHAPED and ov in ("", "default", "Scalar", "ScalarList", "Tensor"):
            like.add(op)
    return inplace, like


FOREACH_INPLACE, FOREACH_LIKE = _foreach_ops()


def uses_cublaslt(func: Any, args: tuple[Any, ...]) -> bool:
    """Whether CUDA's addmm takes the cuBLASLt bias-epilogue path (addmm_out_cuda_impl's useLtInterface)."""
    if func not in _LT_OPS:
        return False
    try:
        bias, m1, m2 = args[0], args[1], args[2]
        return (bias.dim() == 1 and m1.dim() == 2 and m2.dim() == 2 and bias.shape[0] == m2.shape[1]
                and m1.shape[0] > 1 and m2.shape[1] > 1
                and bias.dtype in (torch.float32, torch.float16, torch.bfloat16))
    except Exception:
        return False
