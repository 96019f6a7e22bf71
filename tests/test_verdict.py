"""The verdict with its margin: the device estimate against a card, with the method's measured error."""

from __future__ import annotations

import pytest

from freezelab.memory.result import MemoryEstimate, Method, Phase
from freezelab.memory.verdict import DEVICE_ERROR, Verdict, allocator_hint, judge

GiB = 2**30


def test_the_error_band_is_the_methods_measured_error() -> None:
    assert DEVICE_ERROR == {Method.ANALYTIC: 0.036, Method.SIMULATE: 0.036}
    fit = judge(10 * GiB, 20 * GiB, Method.ANALYTIC)
    assert fit.margin_bytes == -(-10 * GiB * 36 // 1000) == 386_547_057   # 0.36 GiB, rounded up
    assert fit.headroom_bytes == 10 * GiB and fit.measured


@pytest.mark.parametrize("card,verdict", [
    (10 * GiB + 386_547_057, Verdict.FITS),           # the estimate plus its whole error band fits
    (10 * GiB + 386_547_056, Verdict.TIGHT),          # one byte less: the card is inside the band
    (10 * GiB, Verdict.TIGHT),                        # exactly the estimate
    (10 * GiB - 386_547_057, Verdict.TIGHT),          # the band's lower edge
    (10 * GiB - 386_547_058, Verdict.DOES_NOT_FIT),   # below it
])
def test_fits_tight_and_does_not_fit_at_the_band_edges(card: int, verdict: Verdict) -> None:
    fit = judge(10 * GiB, card, Method.SIMULATE, measured=False)
    assert fit.verdict is verdict and fit.fits is (verdict is Verdict.FITS) and not fit.measured
    assert fit.to_dict() == {"verdict": str(verdict), "fits": verdict is Verdict.FITS,
                             "headroom_bytes": card - 10 * GiB, "margin_bytes": 386_547_057}


def estimate(peak: int, cache: int) -> MemoryEstimate:
    return MemoryEstimate(Method.ANALYTIC, peak, {}, Phase.BACKWARD, peak + cache + 768 * 2**20,
                          details={"allocator_cache_bytes": cache})


def test_expandable_segments_hint_only_where_the_cache_is_large() -> None:
    assert allocator_hint(estimate(20 * GiB, 3 * GiB)) is not None             # 15% and over 2 GiB
    hint = allocator_hint(estimate(20 * GiB, 3 * GiB))
    assert "expandable_segments:True" in hint and "3.0 GiB" in hint and "23.8 GiB" in hint
    assert allocator_hint(estimate(40 * GiB, 3 * GiB)) is None                 # 7.5% of the peak
    assert allocator_hint(estimate(10 * GiB, GiB + GiB // 2)) is None          # 15%, but under 2 GiB
