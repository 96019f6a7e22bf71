"""What one GPU holds when a step is spread over N data-parallel GPUs.

Assumptions (stated, not measured here):

* `batch` is the per-GPU micro-batch, so activations do not shrink with N.
* DDP (N > 1) with PyTorch's default `gradient_as_bucket_view=False` keeps
  flat gradient buckets beside the `.grad` tensors: one extra gradient-sized
  copy of the trainable parameters for the whole run.
* ZeRO-1 shards the optimizer state (and the step's temporaries) N ways;
  ZeRO-2 also the gradients, with one layer's full gradients alive while they
  are reduce-scattered; ZeRO-3 / FSDP full-shard also the weights, gathering
  the current layer and prefetching the next (two layers of full weights),
  while the root unit (embeddings, lm_head, norms, projector, vision
  embeddings) stays gathered through forward and backward. The optimizer is
  the same (its state in the parameter dtype), not a mixed-precision copy.
* Optimizer offload moves the state and the step's temporaries to CPU RAM;
  gradients still come to the GPU first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from freezelab.workload import Sharding, Workload


@dataclass(frozen=True)
class Resident:
    """Persistent per-GPU bytes, before activations."""

    weights: int
    gradients: int          # all trainable gradients at the end of backward
    state: int
    step_temp: int
    gathered_weights: int = 0    # forward / backward working set of a sharded model
    gathered_grads: int = 0      # backward: full gradients of one unit before reduce-scatter
    buckets: int = 0             # DDP gradient buckets
    cpu_bytes: int = 0           # host RAM taken by an offloaded optimizer
    assumptions: list[str] = field(default_factory=list)


def per_gpu(r: Resident, sharding: str, gpus: int, offload: bool, *, layer_weights: int,
            layer_grads: int, root_weights: int) -> Resident:
    """Per-GPU resident memory. layer_*: the largest transformer layer; root_weights: parameters
    outside the layer stacks."""
    notes: list[str] = []
    out = r
    if gpus > 1:
        n = gpus
        if sharding == "ddp":
            out = replace(out, buckets=r.gradients)
            notes.append("DDP keeps gradient buckets beside .grad (gradient_as_bucket_view=False, "
                         "the default): one more gradient-sized copy")
        if sharding in ("zero1", "zero2", "zero3", "fsdp"):
            out = replace(out, state=-(-r.state // n), step_temp=-(-r.step_temp // n))
        if sharding in ("zero2", "zero3", "fsdp"):
            out = replace(out, gradients=-(-r.gradients // n), gathered_grads=min(layer_grads, r.gradients))
        if sharding in ("zero3", "fsdp"):
            gathered = min(r.weights, root_weights + 2 * layer_weights)
            out = replace(out, weights=-(-r.weights // n), gathered_weights=gathered)
            notes.append("sharded weights are gathered one layer at a time with the next one prefetched; "
                         "the root unit (embeddings, lm_head, projector, norms) stays gathered")
    if offload:
        out = replace(out, cpu_bytes=out.state + out.step_temp, state=0, step_temp=0)
        notes.append("the optimizer state and its step run on the CPU")
    return replace(out, assumptions=notes)


def runs_fsdp2(w: Workload) -> bool:
    """ZeRO-2, ZeRO-3 and FSDP on more than one GPU are estimated as FSDP2 runs them
    (freezelab.memory.fsdp2); DDP and ZeRO-1 from the unsharded step."""
    return w.gpus > 1 and w.sharding in (Sharding.ZERO2, Sharding.ZERO3, Sharding.FSDP)


def sharded_notes(w: Workload) -> list[str]:
    """What an FSDP2-estimated mode assumes, in one sentence each."""
    how = ("FSDP2 with reshard_after_forward=False: each layer stays gathered from its forward to its backward"
           if w.sharding == Sharding.ZERO2 else
           "FSDP2 fully_shard: each layer is gathered for its forward and again for its backward, the next one "
           "prefetched; the root unit (embeddings, projector, norms, lm_head) stays gathered through the step")
    notes = [f"{w.sharding.upper()} on {w.gpus} GPUs is estimated as {how}; every parameter, frozen ones included, "
             f"keeps a 1/{w.gpus} shard per GPU, and gradients are reduce-scattered layer by layer"]
    if w.offload_optimizer:
        notes.append("FSDP2's CPUOffloadPolicy: parameter shards, sharded gradients and the optimizer step live in "
                     "host memory" if w.sharding == Sharding.FSDP else
                     "the optimizer state and its step run on the CPU; sharded gradients stay on the GPU")
    return notes
