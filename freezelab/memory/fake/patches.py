"""The process-wide patches a simulation needs, for fake tensors only.

* `F.scaled_dot_product_attention` goes to `sdpa.cuda_sdpa` (CUDA's backend choice);
* transformers' `_ignore_causal_mask_sdpa` knows that the simulated padding mask
  is all ones, as transformers finds out on a GPU;
* `F.dropout` in training runs `native_dropout`, as ATen's `dropout` does on CUDA
  (`is_fused_kernel_acceptable`): autograd keeps a boolean mask, where the CPU
  composite keeps a noise tensor in the input's dtype (LoRA's dropout).

Real tensors (another thread running a real model) keep the original behaviour.
Both are installed reference-counted, so concurrent simulations share one
installation, and restored when the last one exits.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from freezelab.memory.fake.ledger import TensorLedger
from freezelab.memory.fake.sdpa import counting_backends, cuda_sdpa

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


def _fake_aware_dropout(original: Callable) -> Callable:
    def dropout(input, p=0.5, training=True, inplace=False):
        if not _is_fake(input) or not training or not 0 < p < 1 or input.numel() == 0 or inplace:
            return original(input, p=p, training=training, inplace=inplace)
        return torch.native_dropout(input, p, True)[0]
    dropout.__wrapped__ = original
    return dropout


def _install() -> None:
    import transformers.masking_utils as mu

    _SAVED[:] = [(torch.nn.functional, "scaled_dot_product_attention",
                  torch.nn.functional.scaled_dot_product_attention),
                 (mu, "_ignore_causal_mask_sdpa", mu._ignore_causal_mask_sdpa),
                 (torch.nn.functional, "dropout", torch.nn.functional.dropout)]
    torch.nn.functional.scaled_dot_product_attention = _fake_aware_sdpa(
        torch.nn.functional.scaled_dot_product_attention)
    mu._ignore_causal_mask_sdpa = _fake_aware_ignore_mask(mu._ignore_causal_mask_sdpa)
    torch.nn.functional.dropout = _fake_aware_dropout(torch.nn.functional.dropout)


def _restore() -> None:
    for obj, name, value in _SAVED:
        setattr(obj, name, value)
    _SAVED.clear()


@contextlib.contextmanager
def cuda_emulation_installed(ledger: TensorLedger | None = None) -> Iterator[None]:
    """Route SDPA to `cuda_sdpa` and let transformers skip the all-ones padding mask, for fake
    tensors only, while inside; count this thread's SDPA backends into `ledger.sdpa_backends`."""
    global _PATCH_DEPTH
    with _PATCH_LOCK:
        if _PATCH_DEPTH == 0:
            _install()
        _PATCH_DEPTH += 1
    try:
        with counting_backends(ledger.sdpa_backends if ledger is not None else None):
            yield
    finally:
        with _PATCH_LOCK:
            _PATCH_DEPTH -= 1
            if _PATCH_DEPTH == 0:
                _restore()
