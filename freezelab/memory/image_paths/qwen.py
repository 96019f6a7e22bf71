"""Image paths of the Qwen2-VL family: Conv3d patches, 2D RoPE, attention per image (or per window
in Qwen2.5-VL), the PatchMerger inside the tower and Qwen3-VL's DeepStack mergers."""

from __future__ import annotations

from typing import Any

from freezelab.memory.blocks import Groups, find
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.image_paths.common import (
    block_recipe,
    embeddings,
    pixel_elem,
    tower_params,
    vision_heads,
    width_of,
)
from freezelab.memory.stages import PROJECTOR, VISION, Flow, Stage, layer_stage
from freezelab.memory.structure import layer_params, relative


# -- Qwen2-VL / Qwen2.5-VL / Qwen3-VL ----------------------------------------------------------

# Towers that expose no input embeddings, so that `enable_input_require_grads` (which gradient
# checkpointing calls) hooks nothing in them: transformers 5.24's Qwen3VLVisionModel sets no
# `_input_embed_layer` and has no `embed_tokens` or `embeddings`, so its get_input_embeddings raises
# and the hook is skipped (Qwen2-VL and Qwen2.5-VL name `patch_embed`).
UNHOOKED_TOWERS = frozenset({"qwen3_vl"})


def _merge(config: dict[str, Any]) -> int:
    return int((config.get("vision_config") or {}).get("spatial_merge_size") or 2)


def _image_groups(f: Flow) -> Groups:
    """One attention sequence per image (its frames' patches)."""
    sizes: dict[int, int] = {}
    for lay in f.layouts:
        n = lay.frames * lay.grid[0] * lay.grid[1]
        sizes[n] = sizes.get(n, 0) + f.batch
    return tuple((count, n) for n, count in sizes.items())


def _window_groups(f: Flow) -> Groups:
    """Qwen2.5-VL's windows (get_vision_window_index): squares of window_size / merge / patch merged
    tokens, cut short at the image's right and bottom edges; each merged token is merge^2 patches."""
    vision = f.index.config.get("vision_config") or {}
    merge = _merge(f.index.config)
    side = int(vision.get("window_size") or 112) // merge // int(vision.get("patch_size") or 14)
    sizes: dict[int, int] = {}
    for lay in f.layouts:
        h, w = lay.grid[0] // merge, lay.grid[1] // merge
        for rows in [min(side, h - r) for r in range(0, h, side)]:
            for cols in [min(side, w - c) for c in range(0, w, side)]:
                n = rows * cols * merge * merge
                sizes[n] = sizes.get(n, 0) + f.batch * lay.frames
    return tuple((count, n) for n, count in sizes.items())


def qwen_vision(f: Flow, stages: list[Stage]) -> tuple[bool, int, int]:
    """Qwen2-VL family towers: Conv3d patches, 2D RoPE (cos / sin in fp32, made once and saved by every
    layer), every layer's attention per image; Qwen2.5-VL reorders the patches into windows first (a
    gather copy, and of cos / sin too) and attends per window except in fullatt_block_indexes."""
    config = f.index.config
    _, rel = tower_params(f)
    hidden = width_of(f)
    rows = f.batch * sum(lay.frames * lay.grid[0] * lay.grid[1] for lay in f.layouts)
    head_dim = vision_heads(config, hidden).head_dim
    flow = embeddings(f, stages, rel, rows, hidden, "patch_embed.", hooked=f.index.model_type not in UNHOOKED_TOWERS)
    if "pos_embed.weight" in rel:  # Qwen3-VL: four learned positions per patch, interpolated and summed
        flow = flow or f.trainable(rel["pos_embed.weight"])
        stages[-1].grad_params.append(rel["pos_embed.weight"])
        stages[-1].out_grad = flow
        stages[-1].fwd_extra = 6 * rounded(rows * hidden * f.num.stream)
    windowed = f.index.model_type == "qwen2_5_vl"
    rope = 2 * rounded(rows * head_dim * 4) * (2 if windowed else 1)
    if windowed:
        t = f.tape()
        x = t.input("patches", rows * hidden, f.num.stream, flow, hidden)
        t.new("windows", rows * hidden, f.num.stream, flow, hidden)
        stages.append(Stage("vision.windows", VISION, fwd_extra=t.fwd_extra, bwd_extra=t.bwd_extra, out_grad=flow,
                            held=rope, cost=t.cost))
    else:
        stages.append(Stage("vision.rotary", VISION, held=rope, out_grad=flow))
    full = set((config.get("vision_config") or {}).get("fullatt_block_indexes") or [])
    taps = list((config.get("vision_config") or {}).get("deepstack_visual_indexes") or [])
    per_image, per_window = _image_groups(f), _window_groups(f) if windowed else ()
    h = vision_heads(config, hidden)
    cache: dict[tuple[Any, ...], Stage] = {}
    tapped: list[bool] = []
    for i, p in enumerate(layer_params(f.index, "vision")):
        groups = per_window if windowed and i not in full else per_image
        recipe = block_recipe(groups, rotary=True, split=True)
        fc1 = find(p, "fc1.weight", "linear_fc1.weight", "gate_proj.weight")
        inter = f.index.params[fc1].shape[0] if fc1 is not None else 4 * hidden
        st = layer_stage(f, recipe, f"vision.layers.{i}", VISION, p, flow, rows, hidden, inter, h, 0, 0, cache)
        st.grad_params = list(p.values())
        flow = st.out_grad
        stages.append(st)
        if i in taps:
            tapped.append(flow)
    for k, tap_flow in enumerate(tapped):  # DeepStack mergers: features for the first LLM layers
        _merger_stage(f, stages, tap_flow, rows, hidden, f"deepstack_merger_list.{k}.", deepstack=True)
    stages.append(Stage("vision.post", VISION, held=rounded(rows * hidden * f.num.stream), dead=True))
    return flow, rows, hidden


def _merger_stage(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int, prefix: str,
                  deepstack: bool = False) -> bool:
    """One of Qwen's patch mergers (the modules under `prefix` in the vision tower): a norm over each patch
    (over merge^2 patches side by side for a DeepStack merger), merge^2 patches side by side (a view),
    Linear, GELU, Linear; Qwen2.5-VL then puts the merged tokens back in image order (a gather copy).
    A DeepStack merger's output lives until the language model has added it (the forward's end)."""
    root = f.index.roots["vision"][0]
    rel = {n: i for n, i in relative(f.index, root).items() if n.startswith(prefix)}
    params = f.index.params
    merge2 = _merge(f.index.config) ** 2
    matrices = [i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 2]
    norm_w = next((i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 1), None)
    norm_b = next((i for n, i in rel.items() if n.endswith("bias") and params[i].shape[0] == params[norm_w].shape[0]
                   and params[i].name.rsplit(".", 1)[0] == params[norm_w].name.rsplit(".", 1)[0]), None)
    biases = {params[i].name.rsplit(".", 1)[0]: i for n, i in rel.items() if n.endswith(".bias")}
    t = f.tape()
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    if deepstack:
        t.t[x].width = width * merge2  # viewed before the norm (use_postshuffle_norm)
    x = t.layer_norm(x, "norm", norm_w, norm_b) if norm_b is not None else t.rms_norm(x, "norm", norm_w)
    t.t[x].width = width * merge2  # .view(-1, hidden * merge^2)
    for k, w in enumerate(matrices):
        if k:
            x = t.act("gelu", x, f"act{k}")
        x = t.linear(x, f"fc{k}", params[w].shape[0], w, biases.get(params[w].name.rsplit(".", 1)[0]))
    y = x
    if f.index.model_type == "qwen2_5_vl":
        y = t.new("ordered", t.t[x].numel, t.t[x].elem, t.grad(x), t.t[x].width)
    name = f"projector.{prefix.rstrip('.')}" if deepstack else "projector"
    stage = Stage(name, PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()), out_grad=t.grad(y),
                  cost=t.cost, forward_only=t.forward_cached + (t.nbytes(y) if deepstack else 0))
    stage.held = 0 if deepstack else t.nbytes(y)
    stages.append(stage)
    return t.grad(y)


def merger_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """The merger that hands the image tokens to the language model (DeepStack's run with the tower)."""
    deep = any(s.name.startswith("projector.deepstack") and s.out_grad for s in stages)
    return _merger_stage(f, stages, feature_grad, rows, width, "merger.") or deep


def qwen_inputs(f: Flow) -> int:
    """Flattened patches (patches, 3 * T * P * P), image_grid_thw and mm_token_type_ids (int32)."""
    vision = f.index.config.get("vision_config") or {}
    patch, temporal = int(vision.get("patch_size") or 14), int(vision.get("temporal_patch_size") or 2)
    patches = f.batch * sum(lay.frames * lay.grid[0] * lay.grid[1] for lay in f.layouts)
    return (rounded(patches * 3 * temporal * patch * patch * pixel_elem(f)) + rounded(f.batch * len(f.layouts) * 3 * 8)
            + rounded(f.batch * f.seq * 4))
