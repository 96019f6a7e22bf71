"""Integer bookkeeping runs for real inside a simulation; only the float work is fake.

Vision-language forwards compute from token ids and image grids: where the image
tokens are (`input_ids == image_token_id`), M-RoPE positions (Qwen's
`get_rope_index` walks the ids), varlen attention boundaries (`cu_seqlens`,
read with `.tolist()`), window indices, Pixtral's per-image patch counts. Fake
tensors have no values, so each of these would stop the step. The batch's ids,
masks and grids are therefore real tensors, and every op whose tensor inputs are
all real (or an integer / bool factory such as `arange`) runs for real, outside
the fake mode; its outputs are still booked by the ledger like any other
allocation. A boolean mask with known values used as an index into a fake tensor
(`hidden[visual_pos_mask]`) becomes the positions it selects, so the result has
a known shape. Float tensors made from real inputs stay real until they meet a
fake weight; pixels are real for the same reason (Idefics3 drops padding tiles by
their values).
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten
EXACT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
INDEX_OPS = (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._unsafe_index_put.default)
# Above this many bytes an op whose inputs are real runs fake instead: the values a forward reads are
# small (grids, cu_seqlens, token positions, which pixels are padding); what is large (a b x s x s
# attention mask) only needs its shape.
MAX_REAL_BYTES = 1 << 30


def _real(t: torch.Tensor) -> bool:
    return not isinstance(t, FakeTensor) and t.device.type != "meta"


def runs_for_real(func: Any, args: tuple, kwargs: dict) -> bool:
    """All tensor inputs real, or no tensor input and an integer / bool result (arange, zeros(dtype=long)),
    and a result of at most MAX_REAL_BYTES."""
    flat, _ = tree_flatten((args, kwargs))
    tensors = [a for a in flat if isinstance(a, torch.Tensor)]
    if tensors:
        real = all(_real(t) for t in tensors)
    elif kwargs.get("dtype") is not None:
        real = kwargs["dtype"] in EXACT_DTYPES
    elif func in (aten.arange.default, aten.arange.start, aten.arange.start_step):
        real = all(isinstance(a, int) for a in flat if isinstance(a, (int, float)) and not isinstance(a, bool))
    else:
        real = False
    return real and _small(func, args, kwargs)


def _small(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether the op's result stays within MAX_REAL_BYTES (its shape from the meta kernel; an op whose
    shape depends on values, such as nonzero, is at most as large as its input)."""
    to_meta = lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x  # noqa: E731
    try:
        with unset_fake_temporarily():
            out = func(*tree_map(to_meta, args), **tree_map(to_meta, kwargs))
    except Exception:  # noqa: BLE001 - data-dependent shapes (nonzero) and ops without a meta kernel
        return True
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
    return all(o.numel() * o.element_size() <= MAX_REAL_BYTES for o in outs)


def run_real(func: Any, args: tuple, kwargs: dict) -> Any:
    with unset_fake_temporarily():
        return func(*args, **kwargs)


def known_mask_indices(func: Any, args: tuple) -> tuple:
    """`fake[real_bool_mask]` (and index_put with one) with the mask turned into the positions it selects."""
    if func not in INDEX_OPS or len(args) < 2 or not isinstance(args[1], (list, tuple)):
        return args
    indices = args[1]
    if not any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and _real(i) for i in indices):
        return args
    expanded: list[Any] = []
    with unset_fake_temporarily():
        for i in indices:
            if isinstance(i, torch.Tensor) and i.dtype == torch.bool and _real(i):
                expanded.extend(torch.nonzero(i, as_tuple=True))
            else:
                expanded.append(i)
    return (args[0], expanded, *args[2:])
