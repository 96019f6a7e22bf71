"""Fingerprints: equal contents give equal fingerprints; any single-bit-pattern change, a swap, a sign of
zero or a change in any chunk gives a different one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import freezelab.fingerprint as fp
from freezelab.fingerprint import fingerprints

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _one_ulp_up(t: torch.Tensor, i: int) -> torch.Tensor:
    """`t` with element i moved to the neighbouring representable value (bit pattern + 1)."""
    ints = {4: torch.int32, 2: torch.int16}[t.element_size()]
    out = t.clone()
    out.view(ints)[i] += 1
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), pos=st.integers(0, 10_000), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_a_one_ulp_change_anywhere_is_detected(n, pos, dtype, seed):
    torch.manual_seed(seed)
    t = torch.randn(n).to(dtype)
    i = pos % n
    changed = _one_ulp_up(t, i)
    assert not torch.equal(changed, t)
    a, b, c = fingerprints([t, t.clone(), changed])
    assert a == b and a != c


def test_swapping_two_elements_is_detected():
    t = torch.arange(10, dtype=torch.float32)
    s = t.clone()
    s[[2, 7]] = s[[7, 2]]
    (h1, h2), (g1, g2) = fingerprints([t, s])
    assert h1 == g1 and h2 != g2  # the plain sum cannot see a swap, the weighted one does


def test_bits_not_values_are_compared():
    nan1, nan2 = torch.tensor([float("nan")]), torch.tensor([float("nan")])
    zero, negzero = torch.tensor([0.0]), torch.tensor([-0.0])
    a, b, c, d = fingerprints([nan1, nan2, zero, negzero])
    assert a == b      # NaN equals itself bit for bit
    assert c != d      # -0.0 == 0.0 as values, not as bits


def test_changes_in_later_chunks_are_detected(monkeypatch):
    monkeypatch.setattr(fp, "CHUNK", 7)
    t = torch.randn(50)
    moved = t.clone()
    moved[43] += 1.0
    # the same +d / -d at the same offset of two different chunks
    cancel = t.clone()
    cancel[3] += 1.0
    cancel[10] -= 1.0
    base, m, c = fingerprints([t, moved, cancel])
    assert base != m and base != c


def test_non_contiguous_and_shaped_tensors():
    t = torch.randn(6, 5)
    assert fingerprints([t.t()]) == fingerprints([t.t().contiguous()])
    assert fingerprints([t]) != fingerprints([t.t().contiguous()])  # same values, other order


def test_empty_list_and_empty_tensor():
    assert fingerprints([]) == []
    assert fingerprints([torch.empty(0)]) == [(0, 0)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fingerprint_is_deterministic_across_calls(dtype):
    t = torch.randn(1000).to(dtype)
    assert fingerprints([t]) == fingerprints([t])
