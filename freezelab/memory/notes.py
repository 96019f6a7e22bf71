"""Plain sentences for learners: where this plan's memory goes, and why.

The UI shows them verbatim, so each names a number and a cause.
"""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.components import Component
from freezelab.memory.optimizer_state import state_label
from freezelab.memory.result import Category, Phase
from freezelab.memory.stages import ActivationGroup
from freezelab.memory.timeline import Timeline
from freezelab.units import gib
from freezelab.workload import Workload

MAX_NOTES = 5


@dataclass
class Facts:
    workload: Workload
    timeline: Timeline
    trainable: dict[Component, int]  # trainable parameters per component
    llm_layers_trainable: list[bool]
    llm_layers_keep: list[int]      # bytes each decoder layer saves for backward
    kv_cache: int                   # bytes of the text model's KV cache held by the model output
    saved: dict[ActivationGroup, int]  # bytes each group saves for backward (without output-held tensors)
    dead_trainable: int             # trainable parameters that never get a gradient
    state_bytes: int
    temp_bytes: int
    param_elem: int
    vocab: int
    seq: int
    text_only: bool
    assumptions: list[str]


def _peak(f: Facts) -> str:
    m = f.timeline.peak
    total = gib(m.total)
    if m.phase is Phase.OPTIMIZER:
        if f.workload.optimizer == "adamw" and f.temp_bytes and not f.workload.offload_optimizer:
            return (f"The optimizer step is the peak ({total}): AdamW's foreach implementation briefly needs a "
                    f"temporary as large as the trainable weights ({gib(f.temp_bytes)}).")
        return (f"The optimizer step is the peak ({total}): weights, every gradient and the optimizer state "
                "are alive together there.")
    if m.phase is Phase.BACKWARD:
        acts = m.parts[Category.ACTIVATIONS] + m.parts[Category.LOGITS_LOSS]
        where = (" at the loss, where the fp32 logits and their gradients are alive together"
                 if m.stage in ("loss", "lm_head") else f" in {m.stage}")
        grads = m.parts[Category.GRADIENTS]
        if grads < 0.01 * m.total:
            return f"The peak ({total}) comes early in the backward pass{where}: {gib(acts)} of activations are alive."
        return (f"The peak ({total}) comes in the backward pass{where}: {gib(acts)} of saved activations "
                f"meet {gib(grads)} of gradients.")
    if not any(f.trainable.values()):
        return (f"Nothing trains, so no graph is kept: the peak ({total}) is a forward pass with the training "
                f"batch, at {m.stage}.")
    return f"The peak ({total}) comes during the forward pass, at {m.stage}."


def _why_llm(f: Facts) -> str | None:
    kept = sum(f.llm_layers_keep)
    if f.trainable[Component.LLM] == 0 and kept > 0:
        if f.workload.grad_ckpt and not (f.trainable[Component.PROJECTOR] or f.trainable[Component.VISION]):
            cause = "gradient checkpointing makes transformers mark its input embeddings as requiring grad"
        else:
            before = "projector" if f.trainable[Component.PROJECTOR] else "vision tower"
            cause = f"the {before} before it trains: gradients must flow back through it"
        return f"The LLM is frozen but keeps {gib(kept)} of activations because {cause}."
    trained = [i for i, on in enumerate(f.llm_layers_trainable) if on]
    if trained and trained[0] > 0 and not any(f.llm_layers_keep[:trained[0]]):
        return (f"Decoder layers 0-{trained[0] - 1} keep no activations: nothing before them needs a gradient, "
                "so autograd records nothing there.")
    return None


def _why_vision(f: Facts) -> str | None:
    if f.text_only:
        return ("This batch has no images, so the vision tower and projector do not run at all "
                "(a trainable projector gets no gradient).")
    kept = f.saved.get(ActivationGroup.VISION, 0)
    if not any(f.trainable.values()):
        return ("Without a trainable parameter no tower keeps activations for a backward pass; after the forward "
                "only the model output (logits, vision states, KV cache) stays.")
    if f.workload.grad_ckpt and f.trainable[Component.VISION] == 0:
        return ("With gradient checkpointing, transformers marks both towers' input embeddings as requiring "
                "grad, so even the frozen vision tower builds a graph and is recomputed during backward.")
    if f.trainable[Component.VISION] == 0 and kept == 0:
        return "The frozen vision tower is upstream of everything that trains, so it keeps no activations."
    return None


def _kv_cache(f: Facts) -> str | None:
    if f.kv_cache < 0.05 * f.timeline.peak.total:
        return None
    return (f"The text model's KV cache keeps k and v of every layer that needs no gradient until the output is "
            f"dropped: {gib(f.kv_cache)}. Setting text_config.use_cache=False (the top-level use_cache does not "
            "reach it in transformers 5) saves it.")


def _ckpt(f: Facts) -> str | None:
    if not f.workload.grad_ckpt:
        return None
    return "Gradient checkpointing keeps only each layer's input and recomputes one layer at a time in backward."


def _logits(f: Facts) -> str | None:
    m = f.timeline.peak
    loss = m.parts[Category.LOGITS_LOSS]
    if loss < 0.15 * max(1, m.parts[Category.ACTIVATIONS] + loss) or loss < 2**28:
        return None
    w = f.workload
    return (f"The loss upcasts the {w.batch} x {f.seq} x {f.vocab:,} logits to fp32: {gib(loss)} of logits and "
            "their gradients at the peak.")


def _dead(f: Facts) -> str | None:
    if not f.dead_trainable:
        return None
    return (f"Of the trainable parameters, {f.dead_trainable:,} never get a gradient (layers after the vision "
            "feature layer, or post-norms), so they cost no gradient or optimizer state.")


def _state(f: Facts) -> str | None:
    if not f.state_bytes:
        return None
    label = state_label(f.workload.optimizer, f.param_elem)
    return f"{label[0].upper()}{label[1:]}: {gib(f.state_bytes)} here."


def _autocast(f: Facts) -> str | None:
    if f.workload.autocast == "none":
        return None
    return (f"Autocast keeps fp32 weights but runs matmuls in {f.workload.autocast}; the 16-bit weight copies "
            "it makes are saved for backward.")


def _sharding(f: Facts) -> str | None:
    if not f.assumptions:
        return None
    return f"Per GPU: {'; '.join(f.assumptions)}."


def write(f: Facts) -> list[str]:
    candidates = [_peak(f), _why_vision(f), _why_llm(f), _kv_cache(f), _ckpt(f), _logits(f), _dead(f), _state(f),
                  _autocast(f), _sharding(f)]
    return [c for c in candidates if c][:MAX_NOTES]
