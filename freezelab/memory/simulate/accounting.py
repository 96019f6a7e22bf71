"""From the ledger's log to the estimate: the step-2 peak, its breakdown, the device figure.

The log is replayed through the caching allocator (`fake.allocator`), so each
allocation is charged the block it is handed (a cached block at most 1 MiB
larger than the request is not split, and `max_memory_allocated` counts it
whole) and the reserved segments give the allocator cache. Sharding and
offload are applied on the log (`simulate.sharding`) before the peak is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from freezelab.memory.cuda_facts import CUDA_CONTEXT, rounded
from freezelab.memory.fake import log
from freezelab.memory.fake.allocator import AllocatorReplay, replay_caching_allocator
from freezelab.memory.fake.ledger import Label
from freezelab.memory.result import CATEGORIES, STEP_PHASES, Category, MemoryEstimate, Method, Phase
from freezelab.memory.simulate import notes as sim_notes
from freezelab.memory.sharding import ENGINE
from freezelab.memory.simulate import sharding
from freezelab.memory.simulate.phases import StepMarks
from freezelab.memory.simulate.run import Run


@dataclass
class Peak:
    """The steady-state peak as one rank sees it, after sharding."""

    tick: int
    phase: Phase
    breakdown: dict[Category, int]
    activations: dict[Label, int]   # activation bytes per label, largest first
    cache: int                      # the allocator's cached free blocks at the peak

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())


def estimate(run: Run, marks: StepMarks, params: list[torch.nn.Parameter],
             labels: dict[str, Label]) -> MemoryEstimate:
    led = run.ledger
    since = marks.start_t[2]
    replay = replay_caching_allocator(led.entries, since)
    shard = sharding.plan(run.model, run.w, run.sharded)
    peak = _peak(run, replay, shard, since)
    device = peak.total + peak.cache + CUDA_CONTEXT
    run.details.update(_details(run, marks, replay, peak, params, labels))
    n_train = run.details["trainable_params"]
    notes = sim_notes.write(run, peak.breakdown, peak.activations, peak.phase, n_train, labels, shard.notes)
    return MemoryEstimate(
        method=Method.SIMULATE,
        peak_bytes=int(peak.total),
        breakdown=peak.breakdown,
        phase=peak.phase if peak.phase in STEP_PHASES else Phase.OPTIMIZER,
        device_estimate_bytes=int(device),
        activations_by_component=peak.activations,
        notes=notes,
        details=run.details,
        cublas_workspaces=log.count_alive(led.entries, peak.tick, Label.CUBLAS),
    )


def _peak(run: Run, replay: AllocatorReplay, shard: sharding.ShardingPlan, since: int) -> Peak:
    """The tick of the step-2 peak (after sharding), and what is alive there in booked blocks."""
    led, sizes = run.ledger, replay.booked
    if shard.applies:
        t = log.scaled_peak(led.entries, led.phase_marks, shard.scale, since, shard.extra, sizes)[1]
    else:
        t = replay.peak_tick
    cats, comps = log.breakdown_at(led.entries, t, sizes)
    phase = log.phase_at(led.phase_marks, t)
    if shard.applies:
        cats = {c: int(v * shard.scale.get(c, 1.0)) for c, v in cats.items()}
        comps = {c: int(v * shard.scale.get(Category.ACTIVATIONS, 1.0)) for c, v in comps.items()}
        if shard.extra is not None:
            for c, add in shard.extra(phase).items():
                cats[c] = cats.get(c, 0) + int(add)
    breakdown = {c: int(cats.get(c, 0)) for c in CATEGORIES}
    acts = {c: int(v) for c, v in sorted(comps.items(), key=lambda kv: -kv[1]) if v}
    cache = max(replay.reserved_peak - replay.allocated_peak_window, 0)
    if shard.applies:  # the replay is of one unsharded rank: keep its cache fraction
        cache = int(sum(breakdown.values()) * cache / max(replay.allocated_peak_window, 1))
    return Peak(t, phase, breakdown, acts, cache)


def _details(run: Run, marks: StepMarks, replay: AllocatorReplay, peak: Peak,
             params: list[torch.nn.Parameter], labels: dict[str, Label]) -> dict[str, Any]:
    led, sizes, since = run.ledger, replay.booked, marks.start_t[2]
    weights_by_comp: dict[str, int] = {}
    for n, p in run.model.named_parameters():
        c = labels.get(n, Label.OTHER)
        weights_by_comp[c] = weights_by_comp.get(c, 0) + rounded(p.numel() * p.element_size())
    return dict(
        step2_phase_peaks=_phase_peaks(run, since, sizes),
        model_type=run.model_type,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in run.model.parameters()),
        step1_peak_bytes=int(log.window_peak(led.entries, marks.start_t[1], since, sizes)),
        step2_peak_unsharded_bytes=int(replay.allocated_peak_window),
        step2_peak_rounded_bytes=int(led.peak),
        step1_peak_rounded_bytes=int(marks.step1_peak),
        weights_plus_optimizer_state_bytes=int(marks.start_total[2]),
        reserved_peak_bytes=int(replay.reserved_peak),
        allocator_cache_bytes=int(peak.cache),
        cuda_context_bytes=CUDA_CONTEXT,
        weights_by_component=weights_by_comp,
        sdpa_backends=dict(led.sdpa_backends),
        fake_device="cpu (FakeTensorMode)",
        engine=ENGINE[run.w.sharding] if run.w.gpus > 1 else "one GPU",
        target_gpu="sm90 (H100/H200) defaults: 32 MiB cuBLAS workspace per thread",
    )


def _phase_peaks(run: Run, since: int, sizes: dict[int, int]) -> dict[Phase, dict[str, Any]]:
    """Peak and breakdown of each phase of step 2."""
    led = run.ledger
    phases: dict[Phase, dict[str, Any]] = {}
    for ph, (b, tp) in log.phase_peaks(led.entries, led.phase_marks, since, sizes).items():
        if ph in STEP_PHASES:
            pc, _ = log.breakdown_at(led.entries, tp, sizes)
            phases[ph] = {"peak_bytes": int(b), "breakdown": {c: int(pc.get(c, 0)) for c in CATEGORIES}}
    return phases
