"""What nvidia-smi shows for a step: its tensor peak, the free blocks the caching allocator keeps
beside them (from the allocator replay of the step, `memory.allocations`) and the CUDA context.
Figures of other batch sizes or GPU counts of a replayed step take its cache as a share of their peak."""

from __future__ import annotations

from dataclasses import replace

from freezelab.memory.allocations import AllocatorFigures
from freezelab.memory.cuda_facts import CUDA_CONTEXT
from freezelab.memory.result import MemoryEstimate
from freezelab.workload import Workload


def allocator_cache(peak: int, replay: AllocatorFigures, w: Workload) -> int:
    """The free blocks the caching allocator keeps beside the tensors at the peak, from the replay of
    the step. The replay is of one GPU holding everything; with sharding or offload the cache keeps
    its share of the peak."""
    if w.gpus > 1 or w.offload_optimizer:
        return replay.cache * peak // max(1, replay.allocated_peak)
    return replay.cache


def device_estimate(peak: int, cache_share: float) -> int:
    """What nvidia-smi would show for a tensor peak of `peak`: the tensors, the allocator's cached free
    blocks as `cache_share` of the peak (an estimate's replayed share, `cache_share_of`), the CUDA context."""
    return peak + round(peak * cache_share) + CUDA_CONTEXT


def with_cache_share(est: MemoryEstimate, share: float) -> MemoryEstimate:
    """`est` with the allocator's cache as `share` of its tensor peak: what `estimate(..., cache_share=share)`
    gives, from an estimate of the same step with any other share (a curve point kept across batch edits)."""
    return replace(est, device_estimate_bytes=device_with_share(est.peak_bytes, share),
                   details={**est.details, "allocator_cache_bytes": int(est.peak_bytes * share)})


def device_with_share(peak: int, share: float) -> int:
    """The device figure of a tensor peak whose allocator cache is `share` of it (as `with_cache_share`)."""
    return peak + int(peak * share) + CUDA_CONTEXT


def cache_share_of(est: MemoryEstimate) -> float:
    """The allocator's cache of an estimate (either method) as a share of its tensor peak."""
    return max(0, est.device_estimate_bytes - est.peak_bytes - CUDA_CONTEXT) / max(1, est.peak_bytes)
