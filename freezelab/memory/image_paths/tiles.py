"""Image paths of the tile-based families: every tile (or image) one sequence through a SigLIP-type
tower or InternViT; Idefics3 / SmolVLM's pixel-shuffle connector, InternVL's pixel shuffle and MLP,
Gemma 3's pooling projector, PaliGemma's Linear."""

from __future__ import annotations

from freezelab.memory.blocks import gemma_rms_norm
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.image_paths.common import (
    INDEX_ELEM,
    embeddings,
    layers,
    mlp_chain,
    norm_stage,
    pixel_elem,
    projector_rel,
    tower_params,
    width_of,
)
from freezelab.memory.stages import PROJECTOR, VISION, Flow, Stage


# -- tiles: Idefics3 / SmolVLM ------------------------------------------------------------------

def tiles_vision(f: Flow, stages: list[Stage]) -> tuple[bool, int, int]:
    """(features require grad, feature rows, feature width) of a SigLIP-type tower over every tile."""
    _, rel = tower_params(f)
    hidden = width_of(f)
    tiles = f.batch * sum(lay.tiles for lay in f.layouts)
    rows = tiles * f.layouts[0].tile_tokens
    flow = embeddings(f, stages, rel, rows, hidden, "embeddings.", positions=tiles * _patches_per_tile(f))
    if f.index.model_type in ("idefics3", "smolvlm"):  # get_image_features copies the real tiles' pixels
        side = int((f.index.config.get("vision_config") or {}).get("image_size") or 0)
        copy = rounded(tiles * 3 * side * side * pixel_elem(f))
        conv = next((i for n, i in rel.items() if n.endswith("patch_embedding.weight")), None)
        if f.trainable(conv):  # the conv saves its input for its weight's gradient
            stages[-1].kept += copy
        else:
            stages[-1].fwd_extra += copy
    flow = layers(f, stages, flow, rows, hidden, ((tiles, f.layouts[0].tile_tokens),))
    flow = norm_stage(f, stages, rel, "post_layernorm", flow, rows, hidden)
    # the tower's last_hidden_state stays referenced by the model output until it is dropped
    stages.append(Stage("vision.post", VISION, held=rounded(rows * hidden * f.num.stream), dead=True))
    return flow, rows, hidden


def _patches_per_tile(f: Flow) -> int:
    """The patch conv's output positions per tile (InternViT's CLS token is not one of them)."""
    vision = f.index.config.get("vision_config") or {}
    side, patch = vision.get("image_size") or 0, vision.get("patch_size") or 1
    side, patch = (side[0] if isinstance(side, list) else side), (patch[0] if isinstance(patch, list) else patch)
    return (int(side) // int(patch)) ** 2


def shuffle_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """Idefics3Connector: pixel shuffle (two permuted reshapes, each a copy), then one Linear; its output is
    concatenated per sample (a copy the model output keeps as image_hidden_states)."""
    rel = projector_rel(f)
    weight = next(i for n, i in rel.items() if n.endswith(".weight") and len(f.index.params[i].shape) == 2)
    bias = rel.get(next((n for n in rel if n.endswith(".bias")), ""), None)
    out_features, in_features = f.index.params[weight].shape[:2]
    t = f.tape()
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    x = t.new("shuffle1", rows * width, f.num.stream, feature_grad, in_features)
    x = t.new("shuffle2", rows * width, f.num.stream, feature_grad, in_features)
    y = t.linear(x, "proj", out_features, weight, bias)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached, cost=t.cost))
    return t.grad(y)


def tiles_inputs(f: Flow) -> int:
    """pixel_values (batch, tiles, 3, S, S) and Idefics3's pixel_attention_mask, one bool per pixel."""
    side = int((f.index.config.get("vision_config") or {}).get("image_size") or 0)
    pixels = f.batch * sum(lay.tiles for lay in f.layouts) * side * side
    return rounded(3 * pixels * pixel_elem(f)) + rounded(pixels)


# -- InternVL ------------------------------------------------------------------------------------

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
    rel = projector_rel(f)
    y = mlp_chain(t, f, rel, x)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached, cost=t.cost))
    return t.grad(y)


def tile_pixels(f: Flow) -> int:
    """pixel_values of every tile of every image (tiles, 3, S, S)."""
    side = int(((f.index.config.get("vision_config") or {}).get("image_size") or [0])[0]
               if isinstance((f.index.config.get("vision_config") or {}).get("image_size"), list)
               else (f.index.config.get("vision_config") or {}).get("image_size") or 0)
    return rounded(f.batch * sum(lay.tiles for lay in f.layouts) * 3 * side * side * pixel_elem(f))


# -- Gemma 3, PaliGemma ------------------------------------------------------------------------

def gemma3_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """Gemma3MultiModalProjector: the patches transposed into a square (a copy), average-pooled to
    mm_tokens_per_image, Gemma's RMSNorm (in fp32), then a matmul with mm_input_projection_weight."""
    rel = projector_rel(f)
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
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached, cost=t.cost))
    return t.grad(y)


def paligemma_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """PaliGemmaMultiModalProjector: one Linear; the model then divides the features by sqrt(hidden)."""
    rel = projector_rel(f)
    t = f.tape()
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    y = mlp_chain(t, f, rel, x)
    y = t.new("scaled", t.t[y].numel, t.t[y].elem, t.grad(y), t.t[y].width)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(y), out_grad=t.grad(y), forward_only=t.forward_cached, cost=t.cost))
    return t.grad(y)


def square_pixels(f: Flow) -> int:
    """pixel_values (images, 3, S, S) and token_type_ids (int64, one per token)."""
    side = int((f.index.config.get("vision_config") or {}).get("image_size") or 0)
    return (rounded(f.batch * len(f.layouts) * 3 * side * side * pixel_elem(f))
            + rounded(f.batch * f.seq * INDEX_ELEM))
