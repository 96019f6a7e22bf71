"""Dynamic-resolution image tokens: Qwen2-VL / Qwen2.5-VL / Qwen3-VL and Pixtral (Mistral 3).

Both resize each image to multiples of (patch x merge) and encode it whole as one
vision sequence of patches; a 2 x 2 merge then makes one LLM token of four patches.

* Qwen (`Qwen2VLImageProcessor`, image_processing_qwen2_vl.py `smart_resize`):
  each side rounded to a multiple of patch * merge, then scaled so that the
  pixel count lies in [size.shortest_edge, size.longest_edge] (min / max
  pixels); tokens = grid_t * grid_h * grid_w / merge^2 (processing_qwen2_vl.py,
  `image_grid_thw.prod() // merge_size**2`), between <|vision_start|> and
  <|vision_end|>. A video of N frames has grid_t = ceil(N / temporal_patch_size).
* Pixtral (image_processing_pixtral.py `get_resize_output_image_size`): scaled
  down (never up) to fit size.longest_edge, each side rounded up to a multiple of
  patch * spatial_merge_size; the prompt gets h rows of w [IMG] tokens, each row
  closed by [IMG_BREAK] and the last by [IMG_END] (processing_pixtral.py).
"""

from __future__ import annotations

import math
from typing import Any

from freezelab.tokens.layout import ImageLayout, Size, TokenError, positive, vision_config, vision_int

# Qwen2VLImageProcessor's class defaults (image_processing_qwen2_vl.py: size = {"shortest_edge": 56 * 56,
# "longest_edge": 28 * 28 * 1280}); the Hub checkpoints set their own (assets/configs/SOURCES.md)
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 1280
PIXTRAL_LONGEST_EDGE = 1024   # PixtralImageProcessor.size (image_processing_pixtral.py)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> Size:
    """image_processing_qwen2_vl.smart_resize."""
    if max(height, width) / min(height, width) > 200:
        raise TokenError(f"{height}x{width}: Qwen's image processor refuses aspect ratios beyond 200:1")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _qwen_settings(config: dict[str, Any], settings: dict[str, Any]) -> tuple[int, int, int, int, int]:
    vision = vision_config(config)
    patch = positive(settings, "patch_size", vision_int(config, "patch_size"))
    merge = positive(settings, "merge_size", int(vision.get("spatial_merge_size") or 2))
    temporal = positive(settings, "temporal_patch_size", int(vision.get("temporal_patch_size") or 2))
    low = positive(settings, "size.shortest_edge", positive(settings, "min_pixels", QWEN_MIN_PIXELS))
    high = positive(settings, "size.longest_edge", positive(settings, "max_pixels", QWEN_MAX_PIXELS))
    if patch != vision_int(config, "patch_size"):
        raise TokenError(f"the processor's patch_size {patch} differs from the model's "
                         f"vision_config.patch_size {vision_int(config, 'patch_size')}")
    return patch, merge, temporal, low, high


def qwen(config: dict[str, Any], size: Size | None, settings: dict[str, Any], frames: int = 0) -> ImageLayout:
    """One image (frames = 0) or one video of `frames` frames."""
    patch, merge, temporal, low, high = _qwen_settings(config, settings)
    factor = patch * merge
    h, w = size or (factor * 16, factor * 16)
    rh, rw = smart_resize(h, w, factor, low, high)
    grid_t = math.ceil(frames / temporal) if frames else 1
    gh, gw = rh // patch, rw // patch
    tokens = grid_t * gh * gw // merge**2
    what = f"a video of {frames} frames ({grid_t} temporal patches of {temporal})" if frames else "an image"
    notes = () if size else (f"no size given: {h}x{w} assumed",)
    return ImageLayout(1, grid_t * gh * gw, grid_t * gh * gw, tokens, max(h, w), size=(h, w), resized=(rh, rw),
                       grid=(gh, gw), merge=merge**2, special_tokens=2, frames=grid_t,
                       scheme=f"dynamic resolution: {what} resized to multiples of {factor} px, "
                       f"{patch} px patches, {merge}x{merge} merge", notes=notes)


def pixtral(config: dict[str, Any], size: Size | None, settings: dict[str, Any]) -> ImageLayout:
    patch = vision_int(config, "patch_size")
    merge = int(config.get("spatial_merge_size") or 1)
    longest = positive(settings, "size.longest_edge", PIXTRAL_LONGEST_EDGE)
    step = patch * merge
    h, w = size or (longest, longest)
    ratio = max(h / longest, w / longest)
    sh, sw = (int(math.floor(h / ratio)), int(math.floor(w / ratio))) if ratio > 1 else (h, w)
    rows, cols = (sh - 1) // step + 1, (sw - 1) // step + 1
    grid = (rows * merge, cols * merge)
    notes = () if size else (f"no size given: {h}x{w} assumed",)
    return ImageLayout(1, grid[0] * grid[1], grid[0] * grid[1], rows * cols, max(h, w), size=(h, w),
                       resized=(rows * step, cols * step), grid=grid, merge=merge**2, special_tokens=rows,
                       scheme=f"dynamic resolution: scaled to fit {longest} px, {patch} px patches, {merge}x{merge} "
                       "patch merger, one [IMG_BREAK] per row", notes=notes)
