"""Does a step fit a card? The device estimate against the card, with the estimate's own measured error.

A device estimate is a number with an error: checked against every measured
row at hand (benchmarks/memory_accuracy.py --all: 60 steps on an H100 and an
H200, both sm90), each method's device figure was within `DEVICE_ERROR` of what
nvidia-smi showed. So a card is judged against the band [estimate - error,
estimate + error]:

* FITS: the whole band fits (the estimate plus its error is at most the card);
* TIGHT: the card is inside the band: the step may or may not run; the
  headroom (card minus estimate, negative when missing) says by how much;
* DOES NOT FIT: even the estimate minus its error exceeds the card.

What is measured and what is assumed (`cuda_facts`): the CUDA context (768
MiB) and the caching allocator's behaviour were measured on sm90 with CUDA 13
and PyTorch 2.11; the cuBLAS workspace sizes per architecture are read from
PyTorch's source. On cards of other architectures the context and the
allocator are assumed to behave as on the H100, so their verdicts carry that
assumption (`Fit.measured` is False).

`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` makes the caching allocator
map memory onto the end of one growing segment per stream instead of
cudaMalloc'ing a new segment for each large request that no cached block fits,
and split blocks at any size: the fragmentation that the default allocator's
cache holds (free blocks beside the tensor peak that nothing at the peak could
use) mostly goes. Both estimates model the default allocator; with expandable
segments expect less than their device figure, and at least the tensor peak
plus the CUDA context. `allocator_hint` offers it where that cache is large.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from freezelab.memory.claims import DEVICE
from freezelab.memory.result import MemoryEstimate, Method
from freezelab.units import GiB

# The largest |device_estimate_bytes - device_used_bytes| / device_used_bytes over the 60 measured rows,
# as the README claims it (freezelab.memory.claims; benchmarks/memory_accuracy.py --all prints it).
DEVICE_ERROR: dict[Method, float] = {m: claim.max for m, claim in DEVICE.items()}
# The allocator cache (reserved beyond the tensor peak) from which expandable segments are worth a try.
HINT_CACHE_SHARE = 0.10
HINT_CACHE_BYTES = 2 * GiB


class Verdict(StrEnum):
    FITS = "fits"
    TIGHT = "tight"
    DOES_NOT_FIT = "does not fit"


@dataclass(frozen=True)
class Fit:
    verdict: Verdict
    need_bytes: int       # the device estimate on this card
    memory_bytes: int     # the card's total, as nvidia-smi reports it
    margin_bytes: int     # the error band: need_bytes x the method's measured error
    measured: bool = True  # the card's architecture is the measured one (else its figures are assumed)

    @property
    def headroom_bytes(self) -> int:
        """What is left on the card (negative: missing)."""
        return self.memory_bytes - self.need_bytes

    @property
    def fits(self) -> bool:
        """True only when the estimate plus its error fits."""
        return self.verdict is Verdict.FITS

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": str(self.verdict), "fits": self.fits, "headroom_bytes": self.headroom_bytes,
                "margin_bytes": self.margin_bytes}


def error_of(method: Method | str) -> float:
    return DEVICE_ERROR[Method(method)]


def judge(need_bytes: int, memory_bytes: int, method: Method | str, measured: bool = True) -> Fit:
    """The verdict for a step needing `need_bytes` (a device estimate by `method`) on a card."""
    margin = -(-need_bytes * int(error_of(method) * 10_000) // 10_000)
    if need_bytes + margin <= memory_bytes:
        verdict = Verdict.FITS
    elif need_bytes - margin <= memory_bytes:
        verdict = Verdict.TIGHT
    else:
        verdict = Verdict.DOES_NOT_FIT
    return Fit(verdict, need_bytes, memory_bytes, margin, measured)


def allocator_hint(est: MemoryEstimate) -> str | None:
    """A sentence offering expandable segments where the allocator's cache is a large share."""
    cache = int(est.details.get("allocator_cache_bytes", 0))
    if cache < HINT_CACHE_BYTES or cache < HINT_CACHE_SHARE * est.peak_bytes:
        return None
    return (f"The caching allocator keeps {cache / GiB:.1f} GiB of free blocks beside the {est.peak_bytes / GiB:.1f} "
            "GiB tensor peak: large freed blocks that later, smaller requests split. "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True lets one segment grow instead, which mostly "
            f"removes this; the step would then need less than the {est.device_estimate_bytes / GiB:.1f} GiB shown "
            "(at least the tensor peak plus the CUDA context).")
