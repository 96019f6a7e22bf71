"""Fingerprints of tensor contents, computed where the tensors live.

The sanity step must prove that frozen weights are bit-identical after the
steps. Keeping a copy would double the weight memory (14 GB more for a 7B
model in bf16, on a GPU that is already full), so each tensor is reduced to
two 64-bit sums over its raw bits instead, computed on its own device in
chunks (at most ~100 MB of scratch), and compared afterwards:

  * h1 = sum of the bit patterns (as integers): any change of a single
    element always changes h1;
  * h2 = sum of the bit patterns times pseudo-random weights (different for
    every chunk): changes that cancel in h1 (two elements swapped, +d and -d)
    change h2 unless they hit a weight collision, about 2^-31 odds.

Working on bits, not values, makes NaN == NaN and tells -0.0 from +0.0, as a
bit-identity check must. Integer sums wrap around identically on every
device and in any order, so the fingerprint is deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 22  # elements per reduction: 32 MiB of int64 scratch per temporary
_SEED = 0x5EED


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as a flat integer tensor of the same element size (no copy when contiguous)."""
    import torch

    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    flat = t.detach().reshape(-1)
    if flat.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1)
    if flat.dtype == torch.bool:
        return flat.to(torch.int8)
    return flat.view(ints[flat.element_size()])


def _weights(n: int, device: torch.device) -> torch.Tensor:
    import torch

    gen = torch.Generator().manual_seed(_SEED)
    return torch.randint(1, 2**31 - 1, (n,), generator=gen, dtype=torch.int64).to(device)


def fingerprints(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(h1, h2) per tensor; one host transfer per device at the end, not one sync per tensor."""
    import torch

    if not tensors:
        return []
    longest = min(CHUNK, max(t.numel() for t in tensors))
    weights: dict[torch.device, torch.Tensor] = {}
    sums = []
    for t in tensors:
        if t.device not in weights:
            weights[t.device] = _weights(max(longest, 1), t.device)
        sums.append(_fingerprint(t, weights[t.device]))
    home = sums[0].device
    return [(int(a), int(b)) for a, b in torch.stack([s.to(home) for s in sums]).cpu().tolist()]


def _fingerprint(t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    import torch

    bits = _bits(t)
    out = torch.zeros(2, dtype=torch.int64, device=t.device)
    for k, start in enumerate(range(0, bits.numel(), CHUNK)):
        x = bits[start:start + CHUNK].to(torch.int64)
        out[0] += x.sum()
        # Weights differ per chunk: an odd multiplier is a bijection modulo 2^64.
        out[1] += (x * weights[:x.numel()]).sum() * (2 * k + 1)
    return out
