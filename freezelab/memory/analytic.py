"""The analytic memory estimate: instant, from the model index alone (no torch, no transformers).

What is counted is what `torch.cuda.max_memory_allocated()` reports over a
steady-state training step (step 2, as in the calibration protocol):
weights, gradients, optimizer state and the step's temporaries, the
activations autograd saves (freeze-aware, stage by stage), the logits and
the loss' fp32 copies, the batch tensors, and cuBLAS workspaces. Every
tensor is rounded to the caching allocator's 512-byte blocks.

Assumptions, each a fact of the software stack the calibration used
(PyTorch 2.11, CUDA 13, H100, transformers 5.x):

* cuBLAS workspaces come from the caching allocator, one per (thread,
  stream), sized for sm90 as measured (`cuda_facts`); the forward runs on
  the main thread and the backward on autograd's device thread, so a
  training step holds two cuBLAS workspaces.
* The model output stays referenced until after backward (as in the
  protocol's `out = model(**batch); out.loss.backward(); del out`), so the
  logits and the vision tower's returned hidden states live through backward.
  So does the text model's KV cache: transformers 5 reads `use_cache` from
  text_config (True by default; setting it on the top-level config does not
  reach it), so each decoder layer's k and v stay referenced by the output.
  They cost extra only where autograd does not already save them (layers
  with no gradient flowing through); checkpointed layers never cache.
* nvidia-smi shows more than the tensors: the caching allocator keeps freed
  blocks and the CUDA context holds its kernels (`cuda_facts`: 5% of the peak
  and 768 MiB, as measured on the H100).
"""

from __future__ import annotations

from freezelab.adapters import Adapters
from freezelab.components import Component
from freezelab.errors import FreezelabError
from freezelab.index import ModelIndex
from freezelab.memory import notes as notes_mod
from freezelab.memory import optimizer_state
from freezelab.memory.activations import Numerics
from freezelab.memory.adapter_memory import AdapterResident, adapter_details, adapter_notes, combined_step_temp
from freezelab.memory.adapter_memory import resident as adapter_resident
from freezelab.memory.adapter_ops import AdapterSpec
from freezelab.memory.cuda_facts import (
    ALLOCATOR_CACHE_FRACTION,
    CUBLASLT_WORKSPACE,
    CUDA_CONTEXT,
    MEASURED_ARCH,
    cublas_workspace,
    rounded,
)
from freezelab.memory.result import MemoryEstimate, Method
from freezelab.memory.sharding import Resident, per_gpu
from freezelab.memory.stages import ACTIVATION_GROUPS, Flow, Stage, build
from freezelab.memory.structure import sizes
from freezelab.memory.timeline import Timeline, walk
from freezelab.tokens import ImageLayout, image_layout, workload_sequence
from freezelab.units import gib
from freezelab.workload import DTYPE_BYTES, Workload

CUBLAS_WORKSPACE = cublas_workspace(MEASURED_ARCH)
INDEX_ELEM = 8                     # input_ids, attention_mask and labels are int64


class EstimateError(FreezelabError):
    """The plan does not fit the model it is estimated for."""


def numerics(w: Workload) -> Numerics:
    param = DTYPE_BYTES[w.dtype]
    autocast = w.autocast != "none" and w.dtype == "fp32"
    compute = 2 if (autocast or param == 2) else 4
    return Numerics(param=param, compute=compute, autocast=autocast, eager=w.attn == "eager")


def _values_follow_keys(version: str) -> bool:
    """DynamicLayer.lazy_initialization: up to 5.17 (measured) the cached values take the keys' dtype
    (fp32 under autocast, where rotary makes k fp32); 5.24's source keeps each tensor's own dtype.
    Versions in between are taken as the older behaviour."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (5, 24)


def _layout(index: ModelIndex, w: Workload) -> ImageLayout | None:
    if w.images == 0:
        return None
    return image_layout(index.config, w.image_size, w.images)


def _input_bytes(index: ModelIndex, w: Workload, seq: int, layout: ImageLayout | None, num: Numerics) -> int:
    """The batch on the GPU: ids, mask and labels, plus the pixels of every tile."""
    total = 3 * rounded(w.batch * seq * INDEX_ELEM)
    if layout is not None:
        side = int((index.config.get("vision_config") or {}).get("image_size") or 0)
        pixel_elem = 2 if num.autocast else num.param
        total += rounded(w.batch * w.images * layout.tiles * 3 * side * side * pixel_elem)
    return total


def _buffer_bytes(index: ModelIndex) -> int:
    """Non-parameter buffers: the vision position ids and the rotary inverse frequencies."""
    text = index.config.get("text_config") or {}
    heads = int(text.get("num_attention_heads") or 1)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size") or 0) // heads)
    vision = index.config.get("vision_config") or {}
    side = int(vision.get("image_size") or 0) // max(1, int(vision.get("patch_size") or 1))
    return rounded((side * side + 1) * INDEX_ELEM) + 2 * rounded(head_dim // 2 * 4)


def _grad_owner(stages: list[Stage], mask: list[bool]) -> dict[int, str]:
    """Which backward stage first produces each trainable tensor's gradient (tied: once)."""
    owner: dict[int, str] = {}
    for s in reversed(stages):
        if s.backward:
            for i in s.grad_params:
                if mask[i] and i not in owner:
                    owner[i] = s.name
    return owner


def _resident(index: ModelIndex, w: Workload, owner: dict[int, str], num: Numerics,
              extra: AdapterResident | None = None) -> Resident:
    all_weights, layer, root = sizes(index, num.param)
    extra = extra or AdapterResident()
    weights = all_weights + _buffer_bytes(index) + extra.weights
    live = [optimizer_state.Tensor(index.params[i].shape, index.params[i].numel) for i in owner]
    grads = sum(rounded(t.numel * num.param) for t in live)
    temp = optimizer_state.step_temp_bytes(w.optimizer, live, num.param)
    r = Resident(weights=weights, gradients=grads + extra.gradients,
                 state=optimizer_state.state_bytes(w.optimizer, live, num.param) + extra.state,
                 step_temp=combined_step_temp(w.optimizer, temp, extra.step_temp))
    trainable_layer = max((rounded(index.params[i].numel * num.param) for i in owner), default=0)
    return per_gpu(r, w.sharding, w.gpus, w.offload_optimizer, layer_weights=layer,
                   layer_grads=max(trainable_layer, min(layer, grads)), root_weights=root)


def _cublas_workspaces(stages: list[Stage]) -> int:
    """cuBLAS workspaces held over the step: the forward thread's, and autograd's with a backward."""
    return 2 if any(s.backward for s in stages) else 1


def _workspace(backward: bool, ckpt: bool) -> int:
    """The forward thread's cuBLAS + cuBLASLt workspaces; backward adds the autograd thread's cuBLAS
    one, and checkpointing its cuBLASLt one too (the recomputed forward's bias addmm runs there)."""
    total = CUBLAS_WORKSPACE + CUBLASLT_WORKSPACE
    if backward:
        total += CUBLAS_WORKSPACE + (CUBLASLT_WORKSPACE if ckpt else 0)
    return total


def device_estimate(peak: int) -> int:
    """What nvidia-smi would show: tensors, the allocator's cached free blocks, the CUDA context."""
    return peak + int(peak * ALLOCATOR_CACHE_FRACTION) + CUDA_CONTEXT


def _check(index: ModelIndex, mask: list[bool]) -> None:
    if len(mask) != len(index.params):
        raise EstimateError(f"the plan's mask has {len(mask)} entries but {index.name} has "
                            f"{len(index.params)} parameter tensors: resolve the plan against this model")


def _trainable_by_component(index: ModelIndex, mask: list[bool], spec: AdapterSpec) -> dict[Component, int]:
    """Trainable parameters per component, adapters with the component of the Linear they wrap."""
    out = dict.fromkeys(Component, 0)
    for p, on in zip(index.params, mask):
        if on:
            out[Component(p.component)] += p.numel
    dora = spec.dora
    for weight, layer in spec.layers.items():
        out[Component(index.params[weight].component)] += layer.numel(dora)
    return out


def estimate(index: ModelIndex, mask: list[bool], workload: Workload, *,
             input_require_grads: bool | None = None, adapters: Adapters | None = None) -> MemoryEstimate:
    """Peak GPU memory of one steady-state training step of `index` with trainable `mask`.

    input_require_grads: whether transformers' input-embedding hooks are installed (they make both
    towers build a graph even when frozen). None: exactly when gradient checkpointing is on, which
    installs them; True models hooks left behind after checkpointing was turned off.

    adapters: the plan's LoRA / DoRA adapters and quantized base (Resolution.adapters), which add their
    tensors, gradients, optimizer state and activations (freezelab.memory.adapter_ops)."""
    _check(index, mask)
    w, num = workload, numerics(workload)
    layout = _layout(index, w)
    seq = workload_sequence(index.config, w)
    use_cache = bool((index.config.get("text_config") or {}).get("use_cache", True))
    spec = AdapterSpec.of(adapters)
    flow = Flow(index, mask, num, w.batch, seq, w.images, layout, w.grad_ckpt, use_cache,
                _values_follow_keys(index.transformers_version), input_require_grads, spec)
    stages = build(flow)
    owner = _grad_owner(stages, mask)
    extra = adapter_resident(index, spec, stages, w.optimizer, num.param)
    r = _resident(index, w, owner, num, extra)
    grad_of = {name: extra.grad_of.get(name, 0) for name in (s.name for s in stages)}
    for i, name in owner.items():
        grad_of[name] += rounded(index.params[i].numel * num.param)
    backward = any(s.backward for s in stages)
    divisor = w.gpus if w.gpus > 1 and w.sharding in ("zero2", "zero3", "fsdp") else 1
    tl = walk(stages, r, inputs=_input_bytes(index, w, seq, layout, num), workspace=_workspace(backward, w.grad_ckpt),
              grad_bytes=lambda s: grad_of[s.name], grad_divisor=divisor)
    est = _result(index, mask, w, num, stages, owner, r, tl, seq, spec)
    paged = extra.paged + optimizer_state.paged_bytes(
        w.optimizer, [optimizer_state.Tensor(index.params[i].shape, index.params[i].numel) for i in owner])
    if paged:
        est.details["paged_optimizer_state_bytes"] = paged
        est.notes.append(f"The paged optimizer keeps {gib(paged)} of its state in CUDA unified memory, outside "
                         "PyTorch's allocator: not in the peak; the driver moves it to CPU RAM when the GPU runs short.")
    if spec.adapters is not None:
        est.notes += adapter_notes(spec, extra)
        est.details["adapters"] = adapter_details(spec, extra)
    return est


def _result(index: ModelIndex, mask: list[bool], w: Workload, num: Numerics, stages: list[Stage],
            owner: dict[int, str], r: Resident, tl: Timeline, seq: int, spec: AdapterSpec) -> MemoryEstimate:
    peak = tl.peak
    trainable = _trainable_by_component(index, mask, spec)
    dead = sum(p.numel for i, p in enumerate(index.params) if mask[i] and i not in owner)
    llm_layers = [s for s in stages if s.name.startswith("llm.layers.")]
    embed = index.module_by_path[index.roots["embeddings"][0]].own[0]
    facts = notes_mod.Facts(
        workload=w, timeline=tl, trainable=trainable,
        llm_layers_trainable=[any(mask[i] for i in s.grad_params) for s in llm_layers],
        llm_layers_keep=[s.kept for s in llm_layers], kv_cache=sum(s.held for s in llm_layers),
        saved={c: sum(s.kept for s in stages if s.component == c) for c in ACTIVATION_GROUPS},
        dead_trainable=sum(p.numel for i, p in enumerate(index.params)
                           if mask[i] and i not in owner and p.name in index.dead),
        state_bytes=r.state, temp_bytes=r.step_temp, param_elem=num.param,
        vocab=index.params[embed].shape[0], seq=seq, text_only=w.images == 0, assumptions=r.assumptions)
    details = {
        "sequence_length": seq,
        "tokens_per_step": w.batch * seq,
        "peak_stage": peak.stage,
        "trainable_with_gradient": sum(index.params[i].numel for i in owner),
        "trainable_without_gradient": dead,
        "gradients_total_bytes": r.gradients,
        "cpu_ram_bytes": r.cpu_bytes,
        "activations_at_peak_by_component": {c: peak.activations.get(c, 0) for c in ACTIVATION_GROUPS},
        "stages": [{"name": s.name, "component": s.component, "kept_bytes": s.kept, "held_bytes": s.held,
                    "backward": s.backward} for s in stages],
        "phases": _phase_peaks(tl),
        "assumptions": r.assumptions,
    }
    return MemoryEstimate(
        method=Method.ANALYTIC, peak_bytes=peak.total, breakdown=dict(peak.parts), phase=peak.phase,
        device_estimate_bytes=device_estimate(peak.total),
        activations_by_component={c: tl.end_of_forward.get(c, 0) for c in ACTIVATION_GROUPS},
        notes=notes_mod.write(facts), details=details, cublas_workspaces=_cublas_workspaces(stages))


def _phase_peaks(tl: Timeline) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in tl.moments:
        out[m.phase] = max(out.get(m.phase, 0), m.total)
    return out
