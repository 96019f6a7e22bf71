"""How long one training step takes on a GPU, and a dataset on N of them.

The model, each part with its stated assumption:

* matmuls (the FLOPs `freezelab.compute.flops` counts) run at `mfu` (default 0.5) of the card's
  dense peak for the step's math mode (`freezelab.memory.gpus`): bf16 / fp16 tensor cores for
  16-bit weights or autocast, plain fp32 for fp32 weights without autocast (PyTorch's default
  `allow_tf32=False`). Fused causal attention skips the blocks above the diagonal, so the LLM's
  attention FLOPs are charged at half (the count itself keeps FlopCounterMode's full square);
* bandwidth-bound ops (norms, activations, residual adds, casts, softmax, the loss) move their
  bytes at `bandwidth` (default 0.7) of the card's memory bandwidth;
* `optimizer.step()` moves the bytes it touches at the same rate;
* data-parallel communication (`freezelab.compute.comm`) at `network` (default 0.7) of the link's
  per-direction bandwidth, overlapped with the compute of its phase.

The default 0.5 is the fraction of peak that well-tuned large-model training reaches on A100s
end to end (Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM", SC21: 52% of peak per GPU); here it applies to the matmuls alone, the other
parts are added on top. No kernel launch or data-loading time is modelled. The figures are
estimates for CUDA GPUs; on a CPU the sanity step's own times are not comparable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from freezelab.compute.comm import Communication, per_step
from freezelab.compute.flops import Flops
from freezelab.errors import FreezelabError
from freezelab.memory.gpus import GPUS, Gpu, Link, Math, find_gpu
from freezelab.workload import Autocast, Dtype, Workload

CAUSAL_SHARE = 0.5   # of a causal attention's FLOPs, what a fused kernel actually computes
LIMITS = {"samples": 10**12, "epochs": 10**4}


class TimingError(FreezelabError):
    """An efficiency, a sample count or a link that the time model cannot use."""


@dataclass(frozen=True)
class Efficiency:
    """What fraction of each peak a step reaches (each in (0, 1])."""

    mfu: float = 0.5          # of the dense peak FLOP/s, for matmuls
    bandwidth: float = 0.7    # of the memory bandwidth, for bandwidth-bound ops and the optimizer
    network: float = 0.7      # of the link bandwidth, for data-parallel collectives

    def __post_init__(self) -> None:
        for name in ("mfu", "bandwidth", "network"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise TimingError(f"the {name} efficiency must be a number above 0 and at most 1, got {value!r}")


DEFAULT = Efficiency()


def math_mode(w: Workload) -> Math:
    """The math mode of the step's matmuls."""
    if w.dtype == Dtype.FP32 and w.autocast == Autocast.NONE:
        return Math.FP32
    return Math.BF16 if Dtype.BF16 in (w.dtype, w.autocast) else Math.FP16


@dataclass(frozen=True)
class StepTime:
    """Seconds of one training step on one GPU of `gpu`, by part."""

    gpu: str
    seconds: float
    forward: float                 # matmuls and bandwidth-bound ops of the forward
    backward: float                # ... of the backward (recomputed forwards included)
    optimizer: float
    communication: float           # all collectives (and offload transfers) of the step
    exposed_communication: float   # what of it does not overlap with compute
    matmul: float                  # of forward + backward: the matmuls
    math: Math
    link: Link | None              # None on one GPU
    peak_tflops: float
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "math": str(self.math), "link": str(self.link) if self.link else None}


def _phase_seconds(matmul_flops: float, nbytes: int, peak: float, memory: float) -> tuple[float, float]:
    return matmul_flops / peak, nbytes / memory


def step_time(flops: Flops, gpu: Gpu, w: Workload, eff: Efficiency = DEFAULT, link: Link | None = None) -> StepTime:
    """The step time of `flops` (one GPU's step of `w`) on `gpu`."""
    spec = gpu.compute
    if spec is None:
        raise TimingError(f"{gpu.name} has no compute figures")
    mode = math_mode(w)
    peak = spec.tflops[mode] * 1e12 * eff.mfu
    memory = spec.memory_gbs * 1e9 * eff.bandwidth
    causal = flops.causal_attention
    fwd_mm, fwd_mem = _phase_seconds(flops.split.forward - (1 - CAUSAL_SHARE) * causal.forward,
                                     flops.traffic.forward, peak, memory)
    bwd_mm, bwd_mem = _phase_seconds(flops.split.backward - (1 - CAUSAL_SHARE) * causal.backward,
                                     flops.traffic.backward, peak, memory)
    used = (link or spec.default_link) if w.gpus > 1 else None
    comm = per_step(flops.traffic, w)
    c_fwd, c_bwd, c_off = _comm_seconds(comm, spec.link_gbs(used) if used else 0.0, spec.pcie_gbs, eff)
    fwd, bwd = fwd_mm + fwd_mem, bwd_mm + bwd_mem
    exposed = max(0.0, c_fwd - fwd) + max(0.0, c_bwd - bwd)
    opt = flops.traffic.optimizer / memory + c_off
    return StepTime(gpu.name, fwd + bwd + opt + exposed, fwd, bwd, opt, c_fwd + c_bwd + c_off, exposed,
                    fwd_mm + bwd_mm, mode, used, spec.tflops[mode],
                    assumptions(gpu, w, eff, mode, used))


def _comm_seconds(comm: Communication, link_gbs: float, pcie_gbs: float, eff: Efficiency) -> tuple[float, float, float]:
    rate = link_gbs * 1e9 * eff.network
    off = comm.offload / (pcie_gbs * 1e9 * eff.network) if comm.offload else 0.0
    if not rate:
        return 0.0, 0.0, off
    return comm.forward / rate, comm.backward / rate, off


def assumptions(gpu: Gpu, w: Workload, eff: Efficiency, mode: Math, link: Link | None) -> list[str]:
    """The sentences that go beside a step time."""
    spec = gpu.compute
    assert spec is not None
    out = [f"matmuls at {eff.mfu:.0%} of the {spec.tflops[mode]:g} TFLOP/s dense {mode} peak "
           "(causal attention charged at half)",
           f"bandwidth-bound ops and the optimizer step at {eff.bandwidth:.0%} of {spec.memory_gbs:,.0f} GB/s"]
    if link is not None:
        out.append(f"{w.gpus} GPUs ({w.sharding}) over {link} at {eff.network:.0%} of "
                   f"{spec.link_gbs(link):g} GB/s per direction, overlapped with compute")
    if w.offload_optimizer:
        out.append("the offloaded optimizer's CPU step is not timed, only its PCIe transfers")
    return out


def stated(w: Workload, eff: Efficiency = DEFAULT, link: Link | None = None) -> list[str]:
    """The time model's assumptions for every card at once (each card's own figures are in its
    StepTime's `assumptions`)."""
    out = [f"matmuls at {eff.mfu:.0%} of each card's dense {math_mode(w)} peak (causal attention charged at half)",
           f"bandwidth-bound ops and the optimizer step at {eff.bandwidth:.0%} of its memory bandwidth"]
    if w.gpus > 1:
        where = f"over {link}" if link else "over NVLink (A100, H100, H200) or PCIe (the others)"
        out.append(f"{w.gpus} data-parallel GPUs ({w.sharding}) {where} at {eff.network:.0%} of the link's "
                   "bandwidth, overlapped with compute")
    if w.offload_optimizer:
        out.append("the offloaded optimizer's CPU step is not timed, only its PCIe transfers")
    return out


def step_times(flops: Flops, w: Workload, eff: Efficiency = DEFAULT, link: Link | None = None) -> list[StepTime]:
    """The step time on each common GPU."""
    return [step_time(flops, g, w, eff, link) for g in GPUS if g.compute is not None]


@dataclass(frozen=True)
class TrainingTime:
    samples: int
    epochs: int
    steps: int           # optimizer steps: one per micro-batch of every GPU
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_time(step: StepTime, w: Workload, samples: int, epochs: int = 1) -> TrainingTime:
    """`epochs` passes over `samples` samples, `w.batch` per GPU and step on `w.gpus` GPUs."""
    for name, value in (("samples", samples), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMITS[name]:
            raise TimingError(f"{name} must be a whole number from 1 to {LIMITS[name]:,}, got {value!r}")
    steps = math.ceil(samples * epochs / (w.batch * w.gpus))
    return TrainingTime(samples, epochs, steps, steps * step.seconds)


def beside_measured(flops: Flops, w: Workload, device_name: str, eff: Efficiency = DEFAULT) -> dict[str, Any]:
    """What to show beside a sanity step measured on `device_name` ("cpu", or the CUDA device's name):
    the estimated step time on that card, or why there is none."""
    gpu = None if device_name == "cpu" else find_gpu(device_name)
    if gpu is None:
        note = ("the time model estimates CUDA GPUs; a CPU step is not comparable" if device_name == "cpu" else
                f"{device_name} is not one of the cards the time model knows ({', '.join(g.name for g in GPUS)})")
        return {"gpu": None, "seconds": None, "note": note, "assumptions": []}
    st = step_time(flops, gpu, w.with_(gpus=1), eff)
    return {"gpu": gpu.name, "seconds": st.seconds, "note": f"estimated for one {gpu.name}",
            "assumptions": st.assumptions}
