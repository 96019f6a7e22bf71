"""Every tensor of one training step by size, for the analytic estimate's allocator replay
(`freezelab.memory.allocations`): each weight and buffer, the batch, each trainable tensor's gradient
(with the stage that makes it) and optimizer state, the optimizer step's temporaries and the cuBLAS
workspaces; with adapters their fp32 tensors, gradients and state, and a quantized base's storage
in place of its 16-bit weights (the same facts as `adapter_memory` and `quantized`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from freezelab.index import ModelIndex
from freezelab.memory import optimizer_state
from freezelab.memory.activations import Numerics
from freezelab.memory.adapter_ops import ADAPTER_ELEM, adapter_weight
from freezelab.memory.cuda_facts import CUBLASLT_WORKSPACE, MEASURED_ARCH, cublas_workspace, rounded
from freezelab.memory.quantized import storage_bytes
from freezelab.memory.stages import Flow
from freezelab.tokens import ImageLayout
from freezelab.workload import Workload

CUBLAS_WORKSPACE = cublas_workspace(MEASURED_ARCH)
INDEX_ELEM = 8                     # input_ids, attention_mask and labels are int64


@dataclass
class StepTensors:
    """The per-tensor sizes of one training step, beside its stages."""

    weights: list[int]                   # each parameter and buffer, in construction order
    inputs: list[int]                    # the batch tensors
    param_grads: dict[int, tuple[str, int]]  # parameter -> (the stage whose backward makes its gradient, bytes)
    state: list[list[int]]               # per trainable tensor: its optimizer state tensors
    step_temps: list[int]                # temporaries of optimizer.step()
    step_temps_serial: bool              # one after the other (else all alive at once)
    workspaces: tuple[int, int]          # (cuBLAS, cuBLASLt) bytes of one thread
    logits_fp32: int                     # the logits in fp32 (the loss' copy and its gradients)
    upcast: bool                         # the loss copies 16-bit logits to fp32
    adapter_grads: dict[Any, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    # the tape's adapter handle (role, base weight) -> (the stage whose backward makes its gradients, bytes)
    ckpt: bool = False                   # checkpointing: autograd's thread also needs cuBLASLt
    workspaces_ready: bool = False       # allocated before the step by an earlier one


def input_blocks(index: ModelIndex, w: Workload, seq: int, layout: ImageLayout | None, num: Numerics,
                 flow: Flow) -> list[int]:
    """The batch on the GPU: ids, mask and labels, plus the pixels of every tile."""
    from freezelab.memory import image_paths

    blocks = [rounded(w.batch * seq * INDEX_ELEM)] * 3
    if index.model_type in image_paths.PATHS:
        return [*blocks, image_paths.input_bytes(flow)]
    if layout is not None:
        side = int((index.config.get("vision_config") or {}).get("image_size") or 0)
        pixel_elem = 2 if num.autocast else num.param
        blocks.append(rounded(w.batch * layout.tiles * 3 * side * side * pixel_elem))
    return blocks


def buffer_blocks(index: ModelIndex) -> list[int]:
    """Non-parameter buffers: the vision position ids and the rotary inverse frequencies (as the index
    recorded them, when it did)."""
    if index.buffers:
        return [rounded(numel * elem) for _, numel, elem in index.buffers]
    text = index.config.get("text_config") or {}
    heads = int(text.get("num_attention_heads") or 1)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size") or 0) // heads)
    vision = index.config.get("vision_config") or {}
    side = int(vision.get("image_size") or 0) // max(1, int(vision.get("patch_size") or 1))
    return [rounded((side * side + 1) * INDEX_ELEM)] + [rounded(head_dim // 2 * 4)] * 2


def step_tensors(index: ModelIndex, w: Workload, st: Any, workspaces_ready: bool) -> StepTensors:
    """Every tensor of the step by size, for the allocator replay (`allocations`): the adapters' and a
    quantized base's too (`_adapter_tensors`). `st`: the analytic estimate's step (its numerics, sequence,
    stages, gradient owners, image layout, data flow and adapters)."""
    params, num, seq, owner = index.params, st.num, st.seq, st.owner
    live = [optimizer_state.Tensor(params[i].shape, params[i].numel) for i in sorted(owner)]
    temps, serial = optimizer_state.step_temp_blocks(w.optimizer, live, num.param)
    state = [optimizer_state.state_blocks(w.optimizer, t, num.param) for t in live]
    weights = [rounded(p.numel * num.param) for p in params]
    adapter_grads = _adapter_tensors(index, w, st, weights, state, temps)
    offload = w.offload_optimizer
    embed = index.module_by_path[index.roots["embeddings"][0]].own[0]
    return StepTensors(
        weights=weights + buffer_blocks(index),
        inputs=input_blocks(index, w, seq, st.layout, num, st.flow),
        param_grads={i: (name, rounded(params[i].numel * num.param)) for i, name in owner.items()},
        state=[] if offload else state, step_temps=[] if offload else temps, step_temps_serial=serial,
        workspaces=(CUBLAS_WORKSPACE, CUBLASLT_WORKSPACE),
        logits_fp32=rounded(w.batch * seq * params[embed].shape[0] * 4), upcast=num.compute != 4,
        adapter_grads=adapter_grads, ckpt=w.grad_ckpt, workspaces_ready=workspaces_ready)


def _adapter_tensors(index: ModelIndex, w: Workload, st: Any, weights: list[int], state: list[list[int]],
                     temps: list[int]) -> dict[Any, tuple[str, tuple[int, ...]]]:
    """Puts a quantized base's storage in `weights`, the fp32 adapter tensors after them, their optimizer
    state in `state` and their step temporaries in `temps`; returns their gradients by the tape's adapter handles."""
    spec = st.spec
    if spec.adapters is None:
        return {}
    for i in spec.quantized:
        p = index.params[i]
        weights[i] = storage_bytes(p.numel, p.shape[0], spec.adapters.quant)
    made: dict[int, str] = {}
    for s in reversed(st.stages):   # the backward's order: the first stage to reach a weight makes it
        for i in s.grad_params if s.backward else ():
            if i in spec.layers and i not in made:
                made[i] = s.name
    grads: dict[Any, tuple[str, tuple[int, ...]]] = {}
    live: list[optimizer_state.Tensor] = []
    for i in spec.layers:
        tensors = [optimizer_state.Tensor(shape, math.prod(shape)) for shape in spec.shapes[i]]
        blocks = [rounded(t.numel * ADAPTER_ELEM) for t in tensors]
        weights.extend(blocks)
        if i in made:  # A's with A's product, B's (and DoRA's magnitude's) with B's
            grads[adapter_weight("A", i)] = (made[i], tuple(blocks[:1]))
            grads[adapter_weight("B", i)] = (made[i], tuple(blocks[1:]))
            live += tensors
    state += [optimizer_state.state_blocks(w.optimizer, t, ADAPTER_ELEM) for t in live]
    temps += optimizer_state.step_temp_blocks(w.optimizer, live, ADAPTER_ELEM)[0]
    return grads
