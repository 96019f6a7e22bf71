"""What one GPU holds when a step is spread over N data-parallel GPUs, and which engine each sharding
mode is estimated as.

`batch` is the per-GPU micro-batch, so activations do not shrink with N. The optimizer is the sanity
step's (its state in the parameter dtype), not a mixed-precision copy. Each mode follows one engine
(`ENGINE`), as PyTorch runs it; the sanity step runs ddp and fsdp for real, and the simulation runs
ZeRO-2, ZeRO-3 and FSDP through FSDP2 itself:

* ddp: PyTorch DDP; with N > 1 its gradient buckets (gradient_as_bucket_view=False, the default) hold
  one more gradient-sized copy of the trainable parameters.
* zero1: the optimizer state and the step's temporaries split N ways, gradients and weights whole on
  every GPU (ZeRO stage 1's partitioning), modelled on the unsharded step; no communication buckets.
* zero2: FSDP2 with reshard_after_forward=False (FSDP's SHARD_GRAD_OP): every layer stays gathered from
  its forward to its backward; gradients and optimizer state sharded (freezelab.memory.fsdp2).
* zero3, fsdp: FSDP2 fully_shard, each layer gathered for its forward and again for its backward with
  the next one prefetched; the root unit stays gathered (freezelab.memory.fsdp2).
* Optimizer offload moves the optimizer state and its step to host memory; with fsdp it is FSDP2's
  CPUOffloadPolicy, which also keeps the parameter shards and the sharded gradients there.

Where DeepSpeed differs (microsoft/DeepSpeed @ 38327e0, v0.16: deepspeed/runtime/zero/stage_1_and_2.py,
stage3.py, config.py), a DeepSpeed run needs more than these figures:

* bf16 / fp16 training keeps fp32 master weights of the trainable parameters' partition
  (`single_partition_of_fp32_groups`, `fp32_partitioned_groups_flat`: `.clone().float()`) and the
  optimizer's moments in fp32: 12 bytes per trainable parameter / N where the step here needs 4
  (bf16 AdamW moments) / N. `DEEPSPEED_EXTRA_PER_PARAM` gives the difference.
* Gradient buckets: stages 1 and 2 reduce through `reduce_bucket_size` (default 5e8 elements, one 1 GB
  bf16 buffer with contiguous_gradients, two with overlap_comm); stage 3 keeps a flat reduce bucket of
  the same size and prefetches up to `stage3_prefetch_bucket_size` (5e7) elements; parameters under
  `stage3_param_persistence_threshold` (1e5 elements) stay whole on every GPU.
* Frozen parameters: stages 1 and 2 partition and give fp32 copies only to parameters with
  requires_grad (frozen ones stay whole on every GPU, as under zero1 / zero2 here for the weights);
  stage 3 partitions every parameter, frozen ones included, but creates fp32 partitions and optimizer
  state only for the trainable ones (`_get_trainable_parameter_groups`), as FSDP2 does here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from freezelab.workload import Sharding, Workload

ENGINE: dict[Sharding, str] = {
    Sharding.DDP: "PyTorch DDP",
    Sharding.ZERO1: "ZeRO stage 1 partitioning (optimizer state split N ways), on the unsharded step",
    Sharding.ZERO2: "PyTorch FSDP2, reshard_after_forward=False",
    Sharding.ZERO3: "PyTorch FSDP2 fully_shard",
    Sharding.FSDP: "PyTorch FSDP2 fully_shard",
}
# fp32 master weight (4) + fp32 Adam moments (8) under DeepSpeed's bf16 / fp16 optimizer, less what the
# step here keeps per trainable parameter (moments in the parameter dtype)
DEEPSPEED_MASTER_BYTES = 4
DEEPSPEED_MOMENT_BYTES = 8
DEEPSPEED_REDUCE_BUCKET = 500_000_000   # elements: DeepSpeedZeroConfig.reduce_bucket_size default


@dataclass(frozen=True)
class Resident:
    """Persistent per-GPU bytes, before activations."""

    weights: int
    gradients: int          # all trainable gradients at the end of backward
    state: int
    step_temp: int
    buckets: int = 0             # DDP gradient buckets
    cpu_bytes: int = 0           # host RAM taken by an offloaded optimizer
    assumptions: list[str] = field(default_factory=list)


def runs_fsdp2(w: Workload) -> bool:
    """ZeRO-2, ZeRO-3 and FSDP on more than one GPU are estimated as FSDP2 runs them
    (freezelab.memory.fsdp2); DDP and ZeRO-1 from the unsharded step (`per_gpu`)."""
    return w.gpus > 1 and w.sharding in (Sharding.ZERO2, Sharding.ZERO3, Sharding.FSDP)


def per_gpu(r: Resident, w: Workload) -> Resident:
    """Per-GPU resident memory of the unsharded step under DDP or ZeRO-1 (or one GPU), with offload."""
    notes: list[str] = []
    out = r
    if w.gpus > 1 and w.sharding == Sharding.DDP:
        out = replace(out, buckets=r.gradients)
        notes.append("DDP keeps gradient buckets beside .grad (gradient_as_bucket_view=False, "
                     "the default): one more gradient-sized copy")
    if w.gpus > 1 and w.sharding == Sharding.ZERO1:
        out = replace(out, state=-(-r.state // w.gpus), step_temp=-(-r.step_temp // w.gpus))
        notes.append(f"ZERO1 on {w.gpus} GPUs: the optimizer state and its step are split {w.gpus} ways; "
                     "weights and gradients stay whole on every GPU (no communication buckets counted)")
    if w.offload_optimizer:
        out = replace(out, cpu_bytes=out.state + out.step_temp, state=0, step_temp=0)
        notes.append("the optimizer state and its step run on the CPU")
    return replace(out, assumptions=notes)


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


def deepspeed_extra(w: Workload, trainable_with_grad: int, param_bytes: int, state_bytes: int) -> int:
    """Bytes per GPU a DeepSpeed ZeRO run of `w` needs beyond the estimate: fp32 master weights and fp32
    moments of the trainable partition instead of this optimizer's state, and one reduce bucket."""
    if w.sharding not in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3) or not trainable_with_grad:
        return 0
    master = 0
    if param_bytes < 4 and not w.offload_optimizer:
        ds = -(-trainable_with_grad * (DEEPSPEED_MASTER_BYTES + DEEPSPEED_MOMENT_BYTES) // w.gpus)
        master = max(ds - state_bytes, 0)
    return master + DEEPSPEED_REDUCE_BUCKET * param_bytes  # contiguous_gradients (default): one flat bucket
