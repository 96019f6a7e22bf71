"""Tiled image tokens: InternVL (GotOcr2 tiling + pixel shuffle) and Idefics3 / SmolVLM (split + pixel shuffle).

* InternVL (image_processing_got_ocr2.py `get_optimal_tiled_canvas`,
  `crop_image_to_patches`; processing_internvl.py): the grid of at most
  max_patches tiles whose aspect ratio is closest to the image's, plus a
  thumbnail when there is more than one tile; each tile is one vision sequence of
  (tile / patch)^2 patches + CLS, pixel-shuffled by downsample_ratio;
  <img> + <IMG_CONTEXT> x tokens + </img>.
* Idefics3 / SmolVLM (image_processing_idefics3.py `resize`,
  `resize_for_vision_encoder`, `split_images`; processing_idefics3.py
  `_prompt_split_image`): the longer side resized to size.longest_edge (up or
  down), each side rounded up to a multiple of the tile (max_image_size), cut
  into rows x cols tiles plus one global image; each tile gives
  (tile / patch)^2 / scale_factor^2 tokens after the connector's pixel shuffle.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from freezelab.tokens.layout import ImageLayout, Size, TokenError, positive, vision_int

IDEFICS3_MAX_IMAGE_SIZE = 4096  # image_processing_idefics3.py MAX_IMAGE_SIZE: the absolute bound after resizing


@lru_cache(maxsize=256)
def optimal_tiled_canvas(original: Size, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """image_processing_got_ocr2.get_optimal_tiled_canvas: (columns, rows)."""
    arrangements = sorted(((w, h) for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1)
                           if min_tiles <= w * h <= max_tiles), key=lambda g: g[0] * g[1])
    height, width = original
    aspect, area = width / height, width * height
    best_diff, best = float("inf"), (1, 1)
    for grid in arrangements:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best_diff, best = diff, grid
        elif diff == best_diff and area > 0.5 * tile * tile * grid[0] * grid[1]:
            best = grid
    return best


def internvl(config: dict[str, Any], size: Size | None, settings: dict[str, Any]) -> ImageLayout:
    tile = positive(settings, "size.height", vision_int(config, "image_size"))
    patch = vision_int(config, "patch_size")
    if tile != vision_int(config, "image_size"):
        raise TokenError(f"the processor's tile size {tile} differs from the model's vision_config.image_size")
    ratio = float(config.get("downsample_ratio") or 0.5)
    grid = tile // patch
    per_tile = int(grid * grid * ratio * ratio)
    h, w = size or (tile, tile)
    crop = settings.get("crop_to_patches", True)  # InternVLProcessor's default (processing_internvl.py)
    if crop:
        max_tiles = positive(settings, "max_patches", 12)
        cols, rows = optimal_tiled_canvas((h, w), tile, positive(settings, "min_patches", 1), max_tiles)
    else:
        cols = rows = 1
    thumb = 1 if rows * cols > 1 else 0
    tiles = rows * cols + thumb
    return ImageLayout(tiles, grid * grid + 1, grid * grid, per_tile * tiles, max(h, w), size=(h, w),
                       resized=(rows * tile, cols * tile), grid=(grid, grid),
                       tile_grid=(rows, cols) if tiles > 1 else (0, 0), base_tiles=thumb,
                       merge=round(1 / (ratio * ratio)), special_tokens=2,
                       scheme=f"tiles of {tile} px (at most {positive(settings, 'max_patches', 12)}) + a thumbnail, "
                       f"pixel shuffle {ratio}")


def _rescale_to_max_len(height: int, width: int, max_len: int) -> Size:
    """image_processing_idefics3._resize_output_size_rescale_to_max_len (min_len 1)."""
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        height += height % 2
    else:
        height = max_len
        width = int(height * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _below_upper_bound(height: int, width: int, max_len: int) -> Size:
    aspect = width / height
    if width >= height and width > max_len:
        width, height = max_len, int(max_len / aspect)
    elif height > width and height > max_len:
        height, width = max_len, int(max_len * aspect)
    return max(height, 1), max(width, 1)


def _for_vision_encoder(height: int, width: int, tile: int) -> Size:
    """image_processing_idefics3.resize_for_vision_encoder."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def idefics3(config: dict[str, Any], size: Size | None, settings: dict[str, Any]) -> ImageLayout:
    tile = positive(settings, "max_image_size.longest_edge", vision_int(config, "image_size"))
    if tile != vision_int(config, "image_size"):
        raise TokenError(f"the processor's tile size {tile} differs from the model's vision_config.image_size")
    longest = positive(settings, "size.longest_edge", 4 * tile)
    scale = int(config.get("scale_factor") or 2)
    grid = tile // vision_int(config, "patch_size")
    per_tile = grid * grid // (scale * scale)
    h, w = size or (tile, tile)
    rh, rw = _below_upper_bound(*_rescale_to_max_len(h, w, longest), IDEFICS3_MAX_IMAGE_SIZE)
    rows = cols = 0
    if settings.get("do_image_splitting", True):
        rh, rw = _for_vision_encoder(rh, rw, tile)
        if rh > tile or rw > tile:
            rows, cols = (rh - tile) // tile + 1, (rw - tile) // tile + 1
    else:
        rh = rw = tile
    tiles = rows * cols + 1
    special = 2 * rows * cols + rows + 4 if rows else 3
    return ImageLayout(tiles, grid * grid, grid * grid, per_tile * tiles, max(h, w), size=(h, w), resized=(rh, rw),
                       grid=(grid, grid), tile_grid=(rows, cols), base_tiles=1 if rows else 0,
                       merge=scale * scale, special_tokens=special,
                       scheme=f"longer side to {longest} px, tiles of {tile} px + a global image, "
                       f"pixel shuffle {scale}x{scale}")
