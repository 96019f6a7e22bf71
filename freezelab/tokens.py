"""How many tokens a workload puts through each tower: the single source of these counts.

Pure Python (no torch): the analytic estimator, the simulated estimator and
the sanity step's batch builder all ask this module how many image tokens one
image becomes, how many tiles the vision tower sees, and how long a sample's
sequence is, so their numbers always agree.

The arithmetic is transformers' own (5.x), ported from
`LlavaNextModel.pack_image_features` / `image_size_to_num_patches` /
`unpad_image`, `LlavaOnevisionModel.pack_image_features` (any-res with
`anyres_max_N` pooling) and `select_best_resolution`; the tests run the real
models' feature packing and compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from freezelab.errors import FreezelabError

ANYRES_TYPES = ("llava_next", "llava_next_video", "llava_onevision")


class TokenError(FreezelabError):
    """The config lacks what is needed to count image tokens, or the image size is unusable."""


@dataclass(frozen=True)
class ImageLayout:
    """What one image of a sample becomes."""

    tiles: int               # images the vision tower encodes (any-res: base + grid tiles)
    tile_tokens: int         # vision-tower sequence length per tile (patches, + CLS if the tower has one)
    features_per_tile: int   # rows each tile hands to the projector (CLS dropped by "default")
    image_tokens: int        # positions the image takes in the LLM sequence
    image_size: int          # the square source image side used for any-res, in pixels


def _vision(config: dict[str, Any]) -> dict[str, Any]:
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise TokenError("the config has no vision_config: cannot count image tokens")
    for key in ("image_size", "patch_size"):
        if not isinstance(vision.get(key), int) or vision[key] <= 0:
            raise TokenError(f"vision_config.{key} is missing or not a positive integer")
    return vision


def has_cls(config: dict[str, Any]) -> bool:
    """CLIP towers prepend a class token; SigLIP towers do not."""
    return "siglip" not in str(_vision(config).get("model_type", "clip"))


def patch_grid(config: dict[str, Any]) -> int:
    """Patches per side of one tile."""
    vision = _vision(config)
    return vision["image_size"] // vision["patch_size"]


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


def select_best_resolution(original: tuple[int, int], candidates: list[tuple[int, int]]) -> tuple[int, int]:
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


def _pinpoints(config: dict[str, Any]) -> list[tuple[int, int]]:
    raw = config.get("image_grid_pinpoints")
    if not raw or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
        raise TokenError("an any-res config needs image_grid_pinpoints as a list of [height, width]")
    return [(int(h), int(w)) for h, w in raw]


def _unpadded(grid_h: int, grid_w: int, original: tuple[int, int]) -> tuple[int, int]:
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


def _anyres(config: dict[str, Any], size: int) -> tuple[int, int]:
    """(tiles, image tokens) of one square `size` x `size` image under any-res packing."""
    tile = _vision(config)["image_size"]
    grid = patch_grid(config)
    best_h, best_w = select_best_resolution((size, size), _pinpoints(config))
    rows, cols = best_h // tile, best_w // tile
    # image_size_to_num_patches counts ceil(best / tile) per side, plus the base tile
    tiles = math.ceil(best_h / tile) * math.ceil(best_w / tile) + 1
    cur_h, cur_w = _unpadded(rows * grid, cols * grid, (size, size))
    max_tiles = _max_tiles(config)
    if max_tiles is not None:
        ratio = math.sqrt(cur_h * cur_w / (max_tiles * grid**2))
        if ratio > 1.1:
            cur_h, cur_w = int(cur_h // ratio), int(cur_w // ratio)
    newline = cur_h  # one image_newline per row of the grid
    return tiles, features_per_tile(config) + cur_h * cur_w + newline


def image_layout(config: dict[str, Any], image_size: int | None = None, images_per_sample: int = 1) -> ImageLayout:
    """What one image becomes for this architecture (image_size: the square source image side;
    None means the vision tower's own resolution)."""
    vision = _vision(config)
    size = image_size or vision["image_size"]
    if size <= 0:
        raise TokenError(f"image size must be positive, got {size}")
    per_tile, rows = tile_tokens(config), features_per_tile(config)
    model_type = config.get("model_type")
    if model_type not in ANYRES_TYPES:
        return ImageLayout(1, per_tile, rows, rows, size)
    if model_type == "llava_onevision" and images_per_sample > 1:
        # OneVision's processor sends each image of a multi-image sample as one tile, plus a newline
        return ImageLayout(1, per_tile, rows, rows + 1, size)
    tiles, tokens = _anyres(config, size)
    return ImageLayout(tiles, per_tile, rows, tokens, size)


def image_tokens(config: dict[str, Any], image_size: int | None = None, images_per_sample: int = 1) -> int:
    """LLM sequence positions one image takes."""
    return image_layout(config, image_size, images_per_sample).image_tokens


def sequence_length(config: dict[str, Any], text_tokens: int, images: int, image_size: int | None = None) -> int:
    """Tokens of one sample: its images' tokens plus its text tokens."""
    if images == 0:
        return text_tokens
    return images * image_tokens(config, image_size, images) + text_tokens


def workload_sequence(config: dict[str, Any], workload: Any) -> int:
    """Sequence length of one sample of a freezelab.workload.Workload."""
    return sequence_length(config, workload.text_tokens, workload.images, workload.image_size)
