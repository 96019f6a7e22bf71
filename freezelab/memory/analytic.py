"""The analytic memory estimate: instant, from the model index alone (no torch, no transformers).

What is counted is what `torch.cuda.max_memory_allocated()` reports over a
steady-state training step (step 2, as in the calibration protocol):
weights, gradients, optimizer state and the step's temporaries, the
activations autograd saves (freeze-aware, stage by stage), the logits and
the loss' fp32 copies, the batch tensors, and cuBLAS workspaces. The weights
count the blocks the caching allocator books for them at load; every other
tensor is rounded to its 512-byte blocks.

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
* nvidia-smi shows more than the tensors: the CUDA context with its kernels
  (`cuda_facts`: 768 MiB, as measured on the H100) and the free blocks the
  caching allocator keeps. Those come from replaying the step, tensor by
  tensor in order, through the same allocator model the simulation uses
  (`allocations`), not from a fixed fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from freezelab.adapters import Adapters
from freezelab.components import Component
from freezelab.errors import FreezelabError
from freezelab.families import family
from freezelab.index import ModelIndex
from freezelab.memory import notes as notes_mod
from freezelab.memory import optimizer_state
from freezelab.memory.activations import Numerics
from freezelab.memory.allocations import AllocatorFigures, figures
from freezelab.memory.adapter_memory import AdapterResident, adapter_details, adapter_notes, combined_step_temp
from freezelab.memory.adapter_memory import resident as adapter_resident
from freezelab.memory.adapter_ops import AdapterSpec
from freezelab.memory.cuda_facts import CUBLASLT_WORKSPACE, CUDA_CONTEXT, rounded
from freezelab.memory.fsdp2 import ROOT, Fsdp2
from freezelab.memory.owned import owned
from freezelab.memory.replay_memo import replayed
from freezelab.memory.result import MemoryEstimate, Method
from freezelab.memory.sharding import ENGINE, Resident, deepspeed_extra, per_gpu, runs_fsdp2, sharded_notes
from freezelab.memory.stages import ACTIVATION_GROUPS, Flow, Stage, build
from freezelab.memory.step_tensors import CUBLAS_WORKSPACE, buffer_blocks, input_blocks, step_tensors
from freezelab.memory.structure import booked_weights
from freezelab.memory.timeline import Timeline, walk, walk_fsdp2
from freezelab.tokens import LLAVA_TYPES, ImageLayout, combined, sample_layouts, workload_sequence
from freezelab.units import GiB, gib
from freezelab.workload import DTYPE_BYTES, Sharding, Workload



class EstimateError(FreezelabError):
    """The plan does not fit the model it is estimated for, or the analytic model cannot follow it."""


# The families whose data flow the stages model op by op (the accuracy benchmark checks each against the
# simulation); any other model is refused with a pointer to the simulated estimate, never guessed.
FOLLOWED: dict[str, str] = {
    **{t: "LLaVA" for t in LLAVA_TYPES},
    "idefics3": "SigLIP-type tiles, pixel-shuffle connector", "smolvlm": "SigLIP-type tiles, pixel-shuffle connector",
    "qwen2_vl": "per-image attention with 2D RoPE, PatchMerger", "qwen2_5_vl": "windowed attention with 2D RoPE",
    "internvl": "InternViT tiles with layer scale, pixel shuffle, MLP projector",
    "mistral3": "Pixtral: one block-diagonal sequence of all patches, 2D RoPE, patch merger",
    "qwen3_vl": "per-image attention with 2D RoPE, DeepStack mergers, q/k-normed decoder",
    "gemma3": "pooling projector, Gemma norms, masked attention over image-bidirectional masks",
    "paligemma": "Gemma 2's soft-capped eager attention, final logit soft-capping",
}
NOT_YET: dict[str, str] = {}  # model_type -> what the stages lack for it (a family being modelled)


def followed(index: ModelIndex, w: Workload) -> str | None:
    """Why the stages cannot model this model or workload (with where to go instead), or None."""
    simulate = ("use the simulated estimate (--method simulate, or Verify in the dashboard), which runs the "
                "real model's training step")
    if index.model_type not in FOLLOWED:
        what = NOT_YET.get(index.model_type, "a family whose forward freezelab has not modelled")
        return f"the analytic estimate does not follow {family(index.model_type).title} yet ({what}); {simulate}"
    if w.frames:
        return f"the analytic estimate does not follow videos (frames) yet; {simulate}"
    return None


def check_followed(index: ModelIndex, w: Workload) -> None:
    """Refuse, with where to go instead, a model or workload the stages do not model."""
    why = followed(index, w)
    if why is not None:
        raise EstimateError(why)


def numerics(w: Workload) -> Numerics:
    param = DTYPE_BYTES[w.dtype]
    autocast = w.autocast != "none" and w.dtype == "fp32"
    compute = 2 if (autocast or param == 2) else 4
    return Numerics(param=param, compute=compute, autocast=autocast, eager=w.attn == "eager",
                    fp32_ops=w.autocast != "none")


def _values_follow_keys(version: str) -> bool:
    """DynamicLayer.lazy_initialization: up to 5.17 (measured) the cached values take the keys' dtype
    (fp32 under autocast, where rotary makes k fp32); 5.24's source keeps each tensor's own dtype.
    Versions in between are taken as the older behaviour."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (5, 24)


def _layouts(index: ModelIndex, w: Workload) -> tuple[ImageLayout | None, tuple[ImageLayout, ...]]:
    """All images of one sample as one layout (None: a text-only sample), and each image's. The families
    of memory.image_paths read the images one by one (their tiles may differ in length)."""
    from freezelab.memory.image_paths import PATHS

    if w.images == 0:
        return None, ()
    each = tuple(sample_layouts(index.config, w.with_(frames=0), index.processor))
    return (each[0] if index.model_type in PATHS else combined(list(each))), each


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
              extra: AdapterResident) -> Resident:
    weights = booked_weights(index, num.param, buffer_blocks(index)) + extra.weights
    own = owned(index, owner, num.param, w.optimizer)
    r = Resident(weights=weights, gradients=own.gradients + extra.gradients, state=own.state + extra.state,
                 step_temp=combined_step_temp(w.optimizer, own.step_temp, extra.step_temp))
    return per_gpu(r, w)


def _with_adapters(r: Resident, extra: AdapterResident, optimizer: str) -> Resident:
    """An FSDP2 rank's resident memory with the adapters counted whole, their gradients for the whole step
    and a quantized base's storage: an upper bound (FSDP2 would shard them too)."""
    if not extra.weights and not extra.gradients:
        return r
    note = ("adapters (and a quantized base) are counted whole on every GPU, their gradients for the "
            "whole step: an upper bound, as FSDP2 shards them too")
    return replace(r, weights=r.weights + extra.weights + extra.gradients, state=r.state + extra.state,
                   step_temp=combined_step_temp(optimizer, r.step_temp, extra.step_temp),
                   assumptions=[*r.assumptions, note])


def _sharded_resident(index: ModelIndex, w: Workload, owner: dict[int, str], num: Numerics, fs: Fsdp2) -> Resident:
    """One FSDP2 rank's resident memory: its padded shards (every parameter, frozen ones too), the
    optimizer state of its shards of the trainable ones, its sharded gradients; offload moves them to RAM."""
    rows, unit = fs.layout.rows, fs.layout.unit
    local = [fs.layout.local[i] for i in owner]
    per_unit: dict[str, int] = {}
    for i in owner:
        per_unit[unit[i]] = per_unit.get(unit[i], 0) + rows[i]
    grads = sum(rounded(rows * num.param) for rows in per_unit.values())
    state = optimizer_state.state_bytes(w.optimizer, local, num.param)
    temp = optimizer_state.step_temp_bytes(w.optimizer, local, num.param)
    r = Resident(weights=fs.shards() + sum(buffer_blocks(index)), gradients=grads, state=state, step_temp=temp,
                 assumptions=sharded_notes(w))
    if w.offload_optimizer:
        host = state + temp + (sum(u.shards for u in fs.units.values()) + grads if fs.offload else 0)
        r = Resident(weights=r.weights, gradients=0 if fs.offload else grads, state=0, step_temp=0, cpu_bytes=host,
                     assumptions=r.assumptions)
    return r


def _grads_by_stage(index: ModelIndex, st: _Step, unit: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Per backward stage, the (unit, bytes) of each unsharded gradient it makes; the same for every N, so
    kept on the step for its other walks."""
    if st.by_stage is None:
        st.by_stage = {}
        for i, name in st.owner.items():
            st.by_stage.setdefault(name, []).append((unit[i], rounded(index.params[i].numel * st.num.param)))
    return st.by_stage


def _walk_sharded(index: ModelIndex, mask: list[bool], w: Workload, st: _Step,
                  peak_only: bool = False) -> tuple[Resident, Timeline | int]:
    fs = Fsdp2(index, mask, st.num.param, w.gpus, reshard_after_forward=w.sharding != Sharding.ZERO2,
               offload=w.offload_optimizer and w.sharding == Sharding.FSDP)
    r = _with_adapters(_sharded_resident(index, w, st.owner, st.num, fs), st.extra, w.optimizer)
    by_stage = _grads_by_stage(index, st, fs.layout.unit)
    layers = {u for u in fs.units if u != ROOT}
    tl = walk_fsdp2(st.stages, r, fs, lambda s: s.name if s.name in layers else ROOT, inputs=st.inputs,
                    workspace=st.workspace, grads=lambda s: by_stage.get(s.name, []),
                    has_grad=lambda i: i in st.owner, peak_only=peak_only)
    return r, tl


def _engine_notes(index: ModelIndex, w: Workload, owner: dict[int, str], num: Numerics, r: Resident) -> None:
    """What a DeepSpeed ZeRO run would need on top of figures that follow PyTorch's engines."""
    if w.gpus == 1:
        return
    extra = deepspeed_extra(w, sum(index.params[i].numel for i in owner), num.param, r.state)
    if extra:
        what = ("its reduce bucket (reduce_bucket_size, 5e8 elements; its fp32 master weights and moments are "
                "offloaded with the optimizer)" if w.offload_optimizer or num.param == 4 else
                "fp32 master weights and fp32 moments of the trainable shard, and its reduce bucket "
                "(reduce_bucket_size, 5e8 elements)")
        r.assumptions.append(f"DeepSpeed ZeRO-{w.sharding[-1]} needs about {extra / GiB:.1f} GiB more per GPU: {what}")


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


def allocator_cache(peak: int, replay: AllocatorFigures, w: Workload) -> int:
    """The free blocks the caching allocator keeps beside the tensors at the peak, from the replay of
    the step. The replay is of one GPU holding everything; with sharding or offload the cache keeps
    its share of the peak."""
    if w.gpus > 1 or w.offload_optimizer:
        return replay.cache * peak // max(1, replay.allocated_peak)
    return replay.cache


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
    for weight, layer in spec.layers.items():
        out[Component(index.params[weight].component)] += layer.numel(spec.dora)
    return out


def data_flow(index: ModelIndex, mask: list[bool], w: Workload, input_require_grads: bool | None = None,
              adapters: Adapters | None = None) -> Flow:
    """What the stages of a step are built from (checked: the mask must be this model's), with the plan's
    adapters and quantized base."""
    _check(index, mask)
    layout, layouts = _layouts(index, w)
    use_cache = bool((index.config.get("text_config") or {}).get("use_cache", True))
    if family(index.model_type).cache_from_top:  # the protocol's model.config.use_cache = False reaches it
        use_cache = False
    return Flow(index, mask, numerics(w), w.batch, workload_sequence(index.config, w, index.processor), w.images,
                layout, w.grad_ckpt, use_cache, _values_follow_keys(index.transformers_version), input_require_grads,
                layouts, AdapterSpec.of(adapters))


@dataclass
class _Step:
    """What does not depend on how the step is spread over GPUs: the stages and who makes each gradient."""

    num: Numerics
    seq: int
    stages: list[Stage]
    owner: dict[int, str]
    inputs: int
    workspace: int
    layout: ImageLayout | None
    flow: Flow
    spec: AdapterSpec = field(default_factory=AdapterSpec)         # the adapters and the quantized base
    extra: AdapterResident = field(default_factory=AdapterResident)  # what they add to the resident memory
    by_stage: dict[str, list[tuple[str, int]]] | None = None   # FSDP2 walks: gradients per stage and unit


def _step(index: ModelIndex, mask: list[bool], w: Workload, input_require_grads: bool | None,
          adapters: Adapters | None = None) -> _Step:
    flow = data_flow(index, mask, w, input_require_grads, adapters)
    num, layout, seq, spec = flow.num, flow.layout, flow.seq, flow.spec
    stages = build(flow)
    backward = any(s.backward for s in stages)
    return _Step(num, seq, stages, _grad_owner(stages, mask), sum(input_blocks(index, w, seq, layout, num, flow)),
                 _workspace(backward, w.grad_ckpt), layout, flow, spec,
                 adapter_resident(index, spec, stages, w.optimizer, num.param))


def _walk(index: ModelIndex, mask: list[bool], w: Workload, st: _Step,
          peak_only: bool = False) -> tuple[Resident, Timeline | int]:
    """Resident memory and the walk of the step as `w` spreads it over its GPUs (`peak_only`: the peak's
    total instead of the timeline)."""
    if runs_fsdp2(w):
        return _walk_sharded(index, mask, w, st, peak_only)
    r = _resident(index, w, st.owner, st.num, st.extra)
    own = owned(index, st.owner, st.num.param, w.optimizer)
    grad_of = {s.name: st.extra.grad_of.get(s.name, 0) + own.grad_of.get(s.name, 0) for s in st.stages}
    first_of = {n: max(st.extra.first_of.get(n, 0), own.first_of.get(n, 0)) for n in grad_of}
    tl = walk(st.stages, r, inputs=st.inputs, workspace=st.workspace, grad_bytes=lambda s: grad_of[s.name],
              first_grad=lambda s: first_of[s.name], peak_only=peak_only)
    return r, tl


def estimate(index: ModelIndex, mask: list[bool], workload: Workload, *,
             input_require_grads: bool | None = None, workspaces_ready: bool = False,
             cache_share: float | None = None, adapters: Adapters | None = None) -> MemoryEstimate:
    """Peak GPU memory of one steady-state training step of `index` with trainable `mask`.

    input_require_grads: whether transformers' input-embedding hooks are installed (they make both
    towers build a graph even when frozen). None: exactly when gradient checkpointing is on, which
    installs them; True models hooks left behind after checkpointing was turned off.
    workspaces_ready: the cuBLAS workspaces exist before the step (the process ran one before), as
    in measurements that run many cases in one process; a fresh training run makes them in step 1.
    cache_share: skip the allocator replay and take the allocator's cache as this share of the tensor
    peak (a chart's neighbouring points, from the replayed estimate beside them).

    adapters: the plan's LoRA / DoRA adapters and quantized base (Resolution.adapters), which add their
    tensors, gradients, optimizer state and activations (freezelab.memory.adapter_ops)."""
    check_followed(index, workload)
    st = _step(index, mask, workload, input_require_grads, adapters)
    r, tl = _walk(index, mask, workload, st)
    assert isinstance(tl, Timeline)
    _engine_notes(index, workload, st.owner, st.num, r)
    replay = None
    if cache_share is None:
        key = (bytes(mask), workload, adapters, input_require_grads, workspaces_ready)
        replay = replayed(index, key, lambda: figures(st.stages, step_tensors(index, workload, st, workspaces_ready)))
        cache = allocator_cache(tl.peak.total, replay, workload)
    else:
        cache = int(tl.peak.total * cache_share)
    est = _result(index, mask, workload, st.num, st.stages, st.owner, r, tl, st.seq, cache, st.spec)
    est.details["allocator_replayed"] = replay is not None
    if replay is not None:  # one GPU holding everything, before any sharding
        est.details["allocator_reserved_bytes"] = replay.reserved
    _adapter_account(est, index, workload, st)
    return est


def _adapter_account(est: MemoryEstimate, index: ModelIndex, w: Workload, st: _Step) -> None:
    """The adapters' notes and details, and a paged optimizer's state outside the allocator."""
    if st.spec.adapters is not None:
        est.notes += adapter_notes(st.spec, st.extra)
        est.details["adapters"] = adapter_details(st.spec, st.extra)
    paged = st.extra.paged + optimizer_state.paged_bytes(
        w.optimizer, [optimizer_state.Tensor(index.params[i].shape, index.params[i].numel) for i in st.owner])
    if paged:
        est.details["paged_optimizer_state_bytes"] = paged
        est.notes.append(f"The paged optimizer keeps {gib(paged)} of its state in CUDA unified memory, outside "
                         "PyTorch's allocator: not in the peak; the driver moves it to CPU RAM when the GPU runs short.")


def spread_peaks(index: ModelIndex, mask: list[bool], workload: Workload, spreads: list[Workload], *,
                 input_require_grads: bool | None = None, adapters: Adapters | None = None) -> list[int]:
    """The tensor peak of the same step under each of `spreads` (the workload with other gpus, sharding or
    offload), building its stages once: what `estimate(...).peak_bytes` gives for each, much faster."""
    check_followed(index, workload)
    st = _step(index, mask, workload, input_require_grads, adapters)
    return [int(_walk(index, mask, w, st, peak_only=True)[1]) for w in spreads]


def device_estimate(peak: int, cache_share: float) -> int:
    """What nvidia-smi would show for a tensor peak of `peak`: the tensors, the allocator's cached free
    blocks as `cache_share` of the peak (an estimate's replayed share, `cache_share_of`), the CUDA context."""
    return peak + round(peak * cache_share) + CUDA_CONTEXT


def with_cache_share(est: MemoryEstimate, share: float) -> MemoryEstimate:
    """`est` with the allocator's cache as `share` of its tensor peak: what `estimate(..., cache_share=share)`
    gives, from an estimate of the same step with any other share (a curve point kept across batch edits)."""
    cache = int(est.peak_bytes * share)
    return replace(est, device_estimate_bytes=est.peak_bytes + cache + CUDA_CONTEXT,
                   details={**est.details, "allocator_cache_bytes": cache})


def cache_share_of(est: MemoryEstimate) -> float:
    """The allocator's cache of an estimate (either method) as a share of its tensor peak."""
    return max(0, est.device_estimate_bytes - est.peak_bytes - CUDA_CONTEXT) / max(1, est.peak_bytes)


def _result(index: ModelIndex, mask: list[bool], w: Workload, num: Numerics, stages: list[Stage],
            owner: dict[int, str], r: Resident, tl: Timeline, seq: int, cache: int,
            spec: AdapterSpec) -> MemoryEstimate:
    peak = tl.peak
    trainable = _trainable_by_component(index, mask, spec)
    dead = sum(p.numel for i, p in enumerate(index.params) if mask[i] and i not in owner)
    llm_layers = [s for s in stages if s.name.startswith("llm.layers.")]
    embed = index.module_by_path[index.roots["embeddings"][0]].own[0]
    facts = notes_mod.Facts(
        workload=w, timeline=tl, trainable=trainable,
        llm_layers_trainable=[any(mask[i] for i in s.grad_params) for s in llm_layers],
        llm_layers_keep=[s.kept + _held_saved(s) for s in llm_layers],
        kv_cache=sum(s.held - _held_saved(s) for s in llm_layers),
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
        "allocator_cache_bytes": cache,
        "cuda_context_bytes": CUDA_CONTEXT,
        "activations_at_peak_by_component": {c: peak.activations.get(c, 0) for c in ACTIVATION_GROUPS},
        "stages": [{"name": s.name, "component": s.component, "kept_bytes": s.kept, "held_bytes": s.held,
                    "backward": s.backward} for s in stages],
        "phases": _phase_peaks(tl),
        "assumptions": r.assumptions,
        "engine": ENGINE[w.sharding] if w.gpus > 1 else "one GPU",
    }
    return MemoryEstimate(
        method=Method.ANALYTIC, peak_bytes=peak.total, breakdown=dict(peak.parts), phase=peak.phase,
        device_estimate_bytes=peak.total + cache + CUDA_CONTEXT,
        activations_by_component={c: tl.end_of_forward.get(c, 0) for c in ACTIVATION_GROUPS},
        notes=notes_mod.write(facts), details=details, cublas_workspaces=_cublas_workspaces(stages))


def _held_saved(s: Stage) -> int:
    """What of a layer's KV cache autograd saves too (no extra cost until that layer's backward)."""
    return s.program.held_saved if s.program is not None else 0


def _phase_peaks(tl: Timeline) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in tl.moments:
        out[m.phase] = max(out.get(m.phase, 0), m.total)
    return out
