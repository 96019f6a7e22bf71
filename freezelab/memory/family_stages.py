"""The vision tower and projector stages of the families beyond LLaVA.

Each family's image path as its transformers 5.24 forward runs it, op by op on
the activations tape (freezelab.memory.blocks for the layers):

* tiles (Idefics3 / SmolVLM): every tile one sequence of patches through a
  SigLIP-type tower whose post-norm feeds the connector; the connector's pixel
  shuffle (two reshapes of permuted views: copies) and one Linear.

The stages' grad_params cover every parameter of their component, so whatever
trains gets its gradient and optimizer state where the backward reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from freezelab.memory.activations import Tape
from freezelab.memory.blocks import DecoderKind, Groups, Heads, decoder_block, find, gemma_rms_norm, vision_block
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.stages import PROJECTOR, VISION, Flow, Stage, layer_stage
from freezelab.memory.structure import layer_params, relative

INDEX_ELEM = 8


def _vision_heads(config: dict[str, Any], hidden: int) -> Heads:
    vision = config.get("vision_config") or {}
    heads = int(vision.get("num_attention_heads") or vision.get("num_heads") or 1)
    head_dim = int(vision.get("head_dim") or hidden // heads)
    return Heads(heads, heads, head_dim, str(vision.get("hidden_act", "gelu")))


def _tower_params(f: Flow) -> tuple[str, dict[str, int]]:
    root = f.index.roots["vision"][0]
    return root, relative(f.index, root)


def _width(f: Flow) -> int:
    """The tower's hidden width: its first layer's most common 1-D parameter size."""
    first = layer_params(f.index, "vision")[0]
    sizes = [f.index.params[i].shape[0] for i in first.values() if len(f.index.params[i].shape) == 1]
    return max(set(sizes), key=sizes.count)


def _layers(f: Flow, stages: list[Stage], flow: bool, rows: int, hidden: int, groups: Groups,
            rotary: bool = False) -> bool:
    """Every vision layer as one stage (identical layers computed once); returns whether the last
    one's output requires grad."""
    h = _vision_heads(f.index.config, hidden)
    recipe = partial(_block, groups=groups, rotary=rotary)
    cache: dict[tuple[Any, ...], Stage] = {}
    for i, p in enumerate(layer_params(f.index, "vision")):
        fc1 = find(p, "fc1.weight", "linear_fc1.weight", "gate_proj.weight")
        inter = f.index.params[fc1].shape[0] if fc1 is not None else 4 * hidden
        st = layer_stage(f, recipe, f"vision.layers.{i}", VISION, p, flow, rows, hidden, inter, h, 0, 0, cache)
        st.grad_params = list(p.values())
        flow = st.out_grad
        stages.append(st)
    return flow


def _block(t: Tape, p: dict[str, int], x: str, hidden: int, inter: int, h: Heads, batch: int, seq: int, *,
           groups: Groups, rotary: bool, split: bool = False) -> str:
    return vision_block(t, p, x, hidden, inter, h, groups, rotary, split)


def _embeddings(f: Flow, stages: list[Stage], rel: dict[str, int], rows: int, hidden: int, prefix: str) -> bool:
    """Patch (and position) embeddings: the conv saves only the (resident) pixels; transformers' input
    hook marks its output as requiring grad."""
    params = [i for n, i in rel.items() if n.startswith(prefix)]
    flow = f.hooks or any(f.mask[i] for i in params)
    stages.append(Stage("vision.embeddings", VISION, grad_params=params, out_grad=flow,
                        fwd_extra=3 * rounded(rows * hidden * f.num.stream)))
    return flow


def _norm_stage(f: Flow, stages: list[Stage], rel: dict[str, int], name: str, flow: bool, rows: int,
                hidden: int) -> bool:
    weight, bias = rel.get(f"{name}.weight"), rel.get(f"{name}.bias")
    if weight is None:
        return flow
    t = f.tape()
    x = t.input("x", rows * hidden, f.num.stream, flow, hidden)
    y = t.layer_norm(x, name, weight, bias) if bias is not None else t.rms_norm(x, name, weight)
    stages.append(Stage(f"vision.{name}", VISION, t.kept, t.fwd_extra, t.bwd_extra,
                        [i for i in (weight, bias) if i is not None], out_grad=t.grad(y)))
    return t.grad(y)


def _projector_rel(f: Flow) -> dict[str, int]:
    out: dict[str, int] = {}
    for root in f.index.roots.get("projector", []):
        if root in f.index.module_by_path:
            out.update({f"{root}.{k}": v for k, v in relative(f.index, root).items()})
        elif root in f.index.by_name:
            out[root] = f.index.by_name[root]
    return out


# -- tiles: Idefics3 / SmolVLM ------------------------------------------------------------------

def tiles_vision(f: Flow, stages: list[Stage]) -> tuple[bool, int, int]:
    """(features require grad, feature rows, feature width) of a SigLIP-type tower over every tile."""
    _, rel = _tower_params(f)
    hidden = _width(f)
    tiles = f.batch * sum(lay.tiles for lay in f.layouts)
    rows = tiles * f.layouts[0].tile_tokens
    flow = _embeddings(f, stages, rel, rows, hidden, "embeddings.")
    flow = _layers(f, stages, flow, rows, hidden, ((tiles, f.layouts[0].tile_tokens),))
    flow = _norm_stage(f, stages, rel, "post_layernorm", flow, rows, hidden)
    # the tower's last_hidden_state stays referenced by the model output until it is dropped
    stages.append(Stage("vision.post", VISION, held=rounded(rows * hidden * f.num.stream), dead=True))
    return flow, rows, hidden


def shuffle_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """Idefics3Connector: pixel shuffle (two permuted reshapes, each a copy), then one Linear; its output is
    concatenated per sample (a copy the model output keeps as image_hidden_states)."""
    rel = _projector_rel(f)
    weight = next(i for n, i in rel.items() if n.endswith(".weight") and len(f.index.params[i].shape) == 2)
    bias = rel.get(next((n for n in rel if n.endswith(".bias")), ""), None)
    out_features, in_features = f.index.params[weight].shape[:2]
    t = f.tape()
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    x = t.new("shuffle1", rows * width, f.num.stream, feature_grad, in_features)
    x = t.new("shuffle2", rows * width, f.num.stream, feature_grad, in_features)
    y = t.linear(x, "proj", out_features, weight, bias)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached))
    return t.grad(y)


def _pixel_elem(f: Flow) -> int:
    return 2 if f.num.autocast else f.num.param  # measure.py sends bf16 pixels under autocast


def tiles_inputs(f: Flow) -> int:
    """pixel_values (batch, tiles, 3, S, S) and Idefics3's pixel_attention_mask, one bool per pixel."""
    side = int((f.index.config.get("vision_config") or {}).get("image_size") or 0)
    pixels = f.batch * sum(lay.tiles for lay in f.layouts) * side * side
    return rounded(3 * pixels * _pixel_elem(f)) + rounded(pixels)


# -- Qwen2-VL / Qwen2.5-VL / Qwen3-VL ----------------------------------------------------------

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
    _, rel = _tower_params(f)
    hidden = _width(f)
    rows = f.batch * sum(lay.frames * lay.grid[0] * lay.grid[1] for lay in f.layouts)
    head_dim = _vision_heads(config, hidden).head_dim
    flow = _embeddings(f, stages, rel, rows, hidden, "patch_embed.")
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
                            held=rope))
    else:
        stages.append(Stage("vision.rotary", VISION, held=rope, out_grad=flow))
    full = set((config.get("vision_config") or {}).get("fullatt_block_indexes") or [])
    taps = list((config.get("vision_config") or {}).get("deepstack_visual_indexes") or [])
    per_image, per_window = _image_groups(f), _window_groups(f) if windowed else ()
    h = _vision_heads(config, hidden)
    cache: dict[tuple[Any, ...], Stage] = {}
    tapped: list[bool] = []
    for i, p in enumerate(layer_params(f.index, "vision")):
        groups = per_window if windowed and i not in full else per_image
        recipe = _SPLIT_BLOCKS.setdefault(groups, partial(_block, groups=groups, rotary=True, split=True))
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


_SPLIT_BLOCKS: dict[Groups, Callable[..., str]] = {}


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
                  forward_only=t.forward_cached + (t.nbytes(y) if deepstack else 0))
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
    return (rounded(patches * 3 * temporal * patch * patch * _pixel_elem(f)) + rounded(f.batch * len(f.layouts) * 3 * 8)
            + rounded(f.batch * f.seq * 4))


# -- InternVL ------------------------------------------------------------------------------------

def _mlp_chain(t: Tape, f: Flow, rel: dict[str, int], x: str) -> str:
    """A projector's norm (if any), then its Linear layers in order with the projector activation between."""
    params = f.index.params
    weights = [i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 2]
    bias_of = {params[i].name.rsplit(".", 1)[0]: i for n, i in rel.items() if n.endswith(".bias")}
    norm_w = next((i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 1), None)
    if norm_w is not None:
        norm_b = bias_of.get(params[norm_w].name.rsplit(".", 1)[0])
        x = t.layer_norm(x, "norm", norm_w, norm_b) if norm_b is not None else t.rms_norm(x, "norm", norm_w)
    act = str(f.index.config.get("projector_hidden_act", "gelu"))
    for k, w in enumerate(weights):
        if k:
            x = t.act(act, x, f"act{k}")
        x = t.linear(x, f"fc{k}", params[w].shape[0], w, bias_of.get(params[w].name.rsplit(".", 1)[0]))
    return x


def internvl_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """InternVLModel.get_image_features: the CLS row dropped and the rest reshaped to a square (a copy),
    pixel_shuffle's two permuted .contiguous() copies, then LayerNorm, Linear, GELU, Linear."""
    ratio = float(f.index.config.get("downsample_ratio") or 0.5)
    tiles = f.batch * sum(lay.tiles for lay in f.layouts)
    patches = tiles * f.layouts[0].features_per_tile
    t = f.tape()
    t.input("features", rows * width, f.num.stream, feature_grad, width)
    x = t.new("square", patches * width, f.num.stream, feature_grad, width)
    x = t.new("shuffle1", patches * width, f.num.stream, feature_grad, width)
    x = t.new("shuffle2", patches * width, f.num.stream, feature_grad, round(width / ratio / ratio))
    rel = _projector_rel(f)
    y = _mlp_chain(t, f, rel, x)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached))
    return t.grad(y)


def tile_pixels(f: Flow) -> int:
    """pixel_values of every tile of every image (tiles, 3, S, S)."""
    side = int(((f.index.config.get("vision_config") or {}).get("image_size") or [0])[0]
               if isinstance((f.index.config.get("vision_config") or {}).get("image_size"), list)
               else (f.index.config.get("vision_config") or {}).get("image_size") or 0)
    return rounded(f.batch * sum(lay.tiles for lay in f.layouts) * 3 * side * side * _pixel_elem(f))


# -- Mistral 3 (Pixtral) -----------------------------------------------------------------------

def _patches(f: Flow) -> int:
    """Patches of every image of the batch (each image at its resized size)."""
    return f.batch * sum(lay.grid[0] * lay.grid[1] for lay in f.layouts)


def pixtral_vision(f: Flow, stages: list[Stage]) -> tuple[bool, int, int]:
    """PixtralVisionModel: the conv over the padded batch, every image's patches cut out and concatenated
    into one sequence (a copy), ln_pre, 2D RoPE (cos / sin in the model dtype), and a block-diagonal
    mask (seq x seq in the model dtype) that keeps images apart: attention over one sequence of all
    the batch's patches, which the memory-efficient kernel saves with the mask for its backward."""
    _, rel = _tower_params(f)
    hidden = _width(f)
    rows = _patches(f)
    h = _vision_heads(f.index.config, hidden)
    height = max(lay.resized[0] for lay in f.layouts)
    width = max(lay.resized[1] for lay in f.layouts)
    patch = int((f.index.config.get("vision_config") or {}).get("patch_size") or 14)
    padded = f.batch * len(f.layouts) * (height // patch) * (width // patch)
    flow = _embeddings(f, stages, rel, padded, hidden, "patch_conv.")
    t = f.tape()
    x = t.input("conv", padded * hidden, f.num.stream, flow, hidden)
    x = t.new("sequence", rows * hidden, f.num.stream, flow, hidden)
    t.rms_norm(x, "ln_pre", rel.get("ln_pre.weight"))
    # the mask and cos / sin: saved by every layer's attention when a gradient flows through the tower
    shared = rounded(rows * rows * f.num.compute) + 2 * rounded(rows * h.head_dim * f.num.compute)
    flow = flow or f.trainable(rel.get("ln_pre.weight"))
    layers = [i for p in layer_params(f.index, "vision") for i in p.values()]
    saves = flow or any(f.mask[i] for i in layers)
    stages.append(Stage("vision.ln_pre", VISION, t.kept + (shared if saves else 0), t.fwd_extra + (0 if saves else shared),
                        t.bwd_extra, [i for n, i in rel.items() if n.startswith("ln_pre.")], out_grad=flow))
    flow = _layers(f, stages, flow, rows, hidden, ((1, rows),), rotary=True)
    stages.append(Stage("vision.post", VISION, held=rounded(rows * hidden * f.num.stream), dead=True))
    return flow, rows, hidden


def pixtral_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """Mistral3MultiModalProjector: RMSNorm, the patch merger (each image's merge x merge neighbours
    unfolded side by side and concatenated: a copy) and its Linear, then Linear, GELU, Linear."""
    merge = int(f.index.config.get("spatial_merge_size") or 2)
    rel = _projector_rel(f)
    t = f.tape()
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    x = _mlp_chain_after_norm(t, f, rel, x, merge * merge)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(x), out_grad=t.grad(x), forward_only=t.forward_cached))
    return t.grad(x)


def _mlp_chain_after_norm(t: Tape, f: Flow, rel: dict[str, int], x: str, merge2: int) -> str:
    params = f.index.params
    norm_w = next((i for n, i in rel.items() if n.endswith("norm.weight")), None)
    x = t.rms_norm(x, "norm", norm_w)
    src = t.t[x]
    x = t.new("unfolded", src.numel, src.elem, src.grad, src.width * merge2)
    act = str(f.index.config.get("projector_hidden_act", "gelu"))
    weights = [i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 2]
    bias_of = {params[i].name.rsplit(".", 1)[0]: i for n, i in rel.items() if n.endswith(".bias")}
    for k, w in enumerate(weights):
        if k > 1:
            x = t.act(act, x, f"act{k}")
        x = t.linear(x, f"fc{k}", params[w].shape[0], w, bias_of.get(params[w].name.rsplit(".", 1)[0]))
    return x


def pixtral_inputs(f: Flow) -> int:
    """pixel_values padded to the batch's largest image (images, 3, H, W) and image_sizes (int64)."""
    height = max(lay.resized[0] for lay in f.layouts)
    width = max(lay.resized[1] for lay in f.layouts)
    n = f.batch * len(f.layouts)
    return rounded(n * 3 * height * width * _pixel_elem(f)) + rounded(n * 2 * 8)


# -- Gemma 3, PaliGemma ------------------------------------------------------------------------

def gemma3_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """Gemma3MultiModalProjector: the patches transposed into a square (a copy), average-pooled to
    mm_tokens_per_image, Gemma's RMSNorm (in fp32), then a matmul with mm_input_projection_weight."""
    rel = _projector_rel(f)
    params = f.index.params
    weight = next(i for n, i in rel.items() if len(params[i].shape) == 2)
    norm_w = next(i for n, i in rel.items() if len(params[i].shape) == 1)
    pooled = f.batch * sum(lay.image_tokens for lay in f.layouts)
    t = f.tape()
    t.input("features", rows * width, f.num.stream, feature_grad, width)
    square = t.new("square", rows * width, f.num.stream, feature_grad, width)
    if feature_grad:  # avg_pool2d's backward reads its input
        t._save(square)
    x = t.new("pooled", pooled * width, f.num.stream, feature_grad, width)
    x = gemma_rms_norm(t, x, "norm", norm_w)
    y = t.linear(x, "proj", params[weight].shape[1], weight)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached))
    return t.grad(y)


def paligemma_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """PaliGemmaMultiModalProjector: one Linear; the model then divides the features by sqrt(hidden)."""
    rel = _projector_rel(f)
    t = f.tape()
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    y = _mlp_chain(t, f, rel, x)
    y = t.new("scaled", t.t[y].numel, t.t[y].elem, t.grad(y), t.t[y].width)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached))
    return t.grad(y)


def square_pixels(f: Flow) -> int:
    """pixel_values (images, 3, S, S) and token_type_ids (int64, one per token)."""
    side = int((f.index.config.get("vision_config") or {}).get("image_size") or 0)
    return (rounded(f.batch * len(f.layouts) * 3 * side * side * _pixel_elem(f))
            + rounded(f.batch * f.seq * INDEX_ELEM))


ImagePath = tuple[Callable[[Flow, list[Stage]], tuple[bool, int, int]],
                  Callable[[Flow, list[Stage], bool, int, int], bool], Callable[[Flow], int]]
PATHS: dict[str, ImagePath] = {
    "idefics3": (tiles_vision, shuffle_projector, tiles_inputs),
    "smolvlm": (tiles_vision, shuffle_projector, tiles_inputs),
    "qwen2_vl": (qwen_vision, merger_projector, qwen_inputs),
    "qwen2_5_vl": (qwen_vision, merger_projector, qwen_inputs),
    "qwen3_vl": (qwen_vision, merger_projector, qwen_inputs),
    "internvl": (tiles_vision, internvl_projector, tile_pixels),
    "mistral3": (pixtral_vision, pixtral_projector, pixtral_inputs),
    "gemma3": (tiles_vision, gemma3_projector, square_pixels),
    "paligemma": (tiles_vision, paligemma_projector, square_pixels),
}


def image_stages(f: Flow, stages: list[Stage]) -> bool:
    """The vision and projector stages of a family in PATHS; returns whether the image features the LLM
    receives require grad."""
    vision, projector, _ = PATHS[f.index.model_type]
    feature_grad, rows, width = vision(f, stages)
    return projector(f, stages, feature_grad, rows, width)


_DECODERS: dict[DecoderKind, Callable[..., str]] = {}


def decoder_recipe(f: Flow) -> Callable[..., str] | None:
    """The decoder layer recipe of a family whose layers are not Llama's (None: Llama's)."""
    text = f.index.config.get("text_config") or {}
    model_type = f.index.model_type
    if model_type not in ("gemma3", "paligemma", "qwen3_vl"):
        return None
    act = str(text.get("hidden_activation") or text.get("hidden_act") or "silu")
    if model_type == "qwen3_vl":
        kind = DecoderKind(qk_norm=True, act=act)
    elif model_type == "gemma3":
        masked = f.layout is not None and f.images > 0  # image tokens attend to each other both ways
        kind = DecoderKind(gemma=True, qk_norm=True, attention="masked" if masked else "sdpa", act=act)
    else:
        kind = DecoderKind(gemma=True, attention="softcap", act=act, cap=float(text.get("attn_logit_softcapping") or 0))
    return _DECODERS.setdefault(kind, partial(decoder_block, kind=kind))


def input_bytes(f: Flow) -> int:
    """Bytes of the family's image inputs (pixel tensors, grids, masks), ids and labels aside."""
    return PATHS[f.index.model_type][2](f) if f.layout is not None and f.images > 0 else 0
