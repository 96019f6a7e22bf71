"""What one GPU sends over its links in one data-parallel training step, and when.

The model (stated, not measured here): ring collectives within one node, where each GPU sends
(N-1)/N of the buffer per reduce-scatter or all-gather and twice that per all-reduce, at the
per-direction bandwidth of its link (NVLink or PCIe) times an efficiency (what NCCL's bus
bandwidth reaches of the link). Per step, with N GPUs:

* DDP: an all-reduce of the gradients the plan makes (frozen parameters have none);
* ZeRO-1 / ZeRO-2: a reduce-scatter of the gradients and an all-gather of the updated
  trainable weights: the same volume as DDP's all-reduce;
* ZeRO-3 / FSDP: an all-gather of every weight for the forward, another of the weights the
  backward runs through (a checkpointed layer's replay uses the same gathered weights), and a
  reduce-scatter of the gradients;
* an offloaded optimizer also sends its GPU's gradients to the CPU and gets the updated weights
  back over PCIe (the CPU's optimizer step itself is not timed).

Overlap: gradient communication runs during the backward (buckets are reduced as the gradients
arrive) and ZeRO-3's forward gathers during the forward (prefetch); only what takes longer than
the compute it overlaps with adds to the step. Latency and the last bucket are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.compute.flops import Traffic
from freezelab.workload import Sharding, Workload


@dataclass(frozen=True)
class Communication:
    """Bytes one GPU sends per step, by the phase whose compute they overlap."""

    forward: int = 0       # ZeRO-3 / FSDP weight gathers for the forward
    backward: int = 0      # gradient reduction (and ZeRO-3's backward gathers)
    offload: int = 0       # over PCIe to and from an offloaded optimizer

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.offload


def per_step(traffic: Traffic, w: Workload) -> Communication:
    """What one GPU of `w.gpus` sends in one step of `w` (nothing on one GPU without offload)."""
    n = w.gpus
    offload = 2 * traffic.gradients // (n if w.sharding != Sharding.DDP else 1) if w.offload_optimizer else 0
    if n <= 1:
        return Communication(offload=offload)
    ring = (n - 1) / n
    if w.sharding in (Sharding.ZERO3, Sharding.FSDP):
        return Communication(forward=round(ring * traffic.weights),
                             backward=round(ring * (traffic.backward_weights + traffic.gradients)), offload=offload)
    return Communication(backward=round(2 * ring * traffic.gradients), offload=offload)
