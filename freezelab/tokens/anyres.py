"""LLaVA image tokens: a fixed tile, or LLaVA-NeXT / OneVision any-res tiling.

The arithmetic is transformers' own (5.x), ported from
`LlavaNextModel.pack_image_features` / `image_size_to_num_patches` /
`unpad_image`, `LlavaOnevisionModel.pack_image_features` (any-res with
`anyres_max_N` pooling) and `select_best_resolution`; the tests run the real
models' feature packing and compare.
"""

from __future__ import annotations

import math
from typing import Any

from freezelab.tokens.layout import ImageLayout, Size, TokenError, vision_config, vision_int

ANYRES_TYPES = ("llava_next", "llava_next_video", "llava_onevision")
LLAVA_TYPES = ("llava", "vipllava", *ANYRES_TYPES)


def has_cls(config: dict[str, Any]) -> bool:
    """CLIP towers prepend a class token; SigLIP towers do not."""
    return "siglip" not in str(vision_config(config).get("model_type", "clip"))


def patch_grid(config: dict[str, Any]) -> int:
    """Patches per side of one tile."""
    return vision_int(config, "image_size") // vision_int(config, "patch_size")


def tile_tokens(config: dict[str, Any]) -> int:
    return patch_grid(config) ** 2 + (1 if has_cls(config) else 0)


def features_per_tile(config: dict[str, Any]) -> int:
    """Rows per tile after the feature-select strategy: "default" drops the first (CLS) row;
    VipLlava always drops it."""
    n = tile_tokens(config)
    if config.get("model_type") == "vipllava":
        return n - 1
    strategy = config.get("vision_feature_select_strategy", "default")
    return n - 1 if strategy == "default" else n


def select_best_resolution(original: Size, candidates: list[Size]) -> Size:
    """transformers.image_processing_utils.select_best_resolution: most effective pixels, then least waste."""
    orig_h, orig_w = original
    best, best_effective, best_waste = candidates[0], 0, float("inf")
    for height, width in candidates:
        scale = min(width / orig_w, height / orig_h)
        down_w, down_h = int(orig_w * scale), int(orig_h * scale)
        effective = min(down_w * down_h, orig_w * orig_h)
        waste = width * height - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (height, width), effective, waste
    return best


def _pinpoints(config: dict[str, Any]) -> list[Size]:
    raw = config.get("image_grid_pinpoints")
    if not raw or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
        raise TokenError("an any-res config needs image_grid_pinpoints as a list of [height, width]")
    return [(int(h), int(w)) for h, w in raw]


def _unpadded(grid_h: int, grid_w: int, original: Size) -> Size:
    """unpad_image on a (grid_h, grid_w) feature map of an image of `original` (height, width)."""
    orig_h, orig_w = original
    if orig_w / orig_h > grid_w / grid_h:
        new_h = int(round(orig_h * (grid_w / orig_w), 7))
        pad = (grid_h - new_h) // 2
        return grid_h - 2 * pad, grid_w
    new_w = int(round(orig_w * (grid_h / orig_h), 7))
    pad = (grid_w - new_w) // 2
    return grid_h, grid_w - 2 * pad


def _max_tiles(config: dict[str, Any]) -> int | None:
    """OneVision's `anyres_max_N`: the grid is pooled down to about N tiles' worth of features."""
    if config.get("model_type") != "llava_onevision":
        return None
    ratio = str(config.get("vision_aspect_ratio") or "anyres_max_9")
    digits = ratio.removeprefix("anyres_max_")
    return int(digits) if digits.isdigit() else None


def _anyres(config: dict[str, Any], size: Size) -> ImageLayout:
    """One `size` (height, width) image under any-res packing."""
    tile = vision_int(config, "image_size")
    grid = patch_grid(config)
    best_h, best_w = select_best_resolution(size, _pinpoints(config))
    rows, cols = best_h // tile, best_w // tile
    # image_size_to_num_patches counts ceil(best / tile) per side, plus the base tile
    tiles = math.ceil(best_h / tile) * math.ceil(best_w / tile) + 1
    cur_h, cur_w = _unpadded(rows * grid, cols * grid, size)
    notes = []
    if (cur_h, cur_w) != (rows * grid, cols * grid):
        notes.append(f"unpadding: the {rows * grid}x{cols * grid} feature grid keeps {cur_h}x{cur_w}")
    max_tiles = _max_tiles(config)
    if max_tiles is not None:
        ratio = math.sqrt(cur_h * cur_w / (max_tiles * grid**2))
        if ratio > 1.1:
            cur_h, cur_w = int(cur_h // ratio), int(cur_w // ratio)
            notes.append(f"anyres_max_{max_tiles}: pooled to {cur_h}x{cur_w}")
    base = features_per_tile(config)
    return ImageLayout(tiles, tile_tokens(config), base, base + cur_h * cur_w + cur_h, max(size), size=size,
                       resized=(best_h, best_w), grid=(grid, grid), tile_grid=(rows, cols), base_tiles=1,
                       newline_tokens=cur_h, scheme="any-res: a base tile plus a grid of tiles, unpadded, "
                       "one image_newline per row", notes=tuple(notes))


def layout(config: dict[str, Any], size: Size | None, images_per_sample: int = 1) -> ImageLayout:
    """What one image becomes for a LLaVA class (size None: the tower's own resolution)."""
    tile = vision_int(config, "image_size")
    size = size or (tile, tile)
    per_tile, rows = tile_tokens(config), features_per_tile(config)
    grid = patch_grid(config)
    model_type = config.get("model_type")
    if model_type not in ANYRES_TYPES:
        return ImageLayout(1, per_tile, rows, rows, max(size), size=size, resized=(tile, tile), grid=(grid, grid),
                           scheme=f"one {tile}x{tile} tile")
    if model_type == "llava_onevision" and images_per_sample > 1:
        # OneVision's processor sends each image of a multi-image sample as one tile, plus a newline
        return ImageLayout(1, per_tile, rows, rows + 1, max(size), size=size, resized=(tile, tile),
                           grid=(grid, grid), newline_tokens=1,
                           scheme="multi-image sample: each image one tile plus a newline")
    return _anyres(config, size)
