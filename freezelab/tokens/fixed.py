"""Fixed-size image tokens: Gemma 3 and PaliGemma resize every image to the tower's square.

* Gemma 3 (modeling_gemma3.py `Gemma3MultiModalProjector`): (image / patch)^2
  patches average-pooled to mm_tokens_per_image soft tokens; the processor
  writes "\\n\\n<start_of_image>" + soft tokens + "<end_of_image>\\n\\n"
  (processing_gemma3.py). Pan-and-scan crops (off by default) are not modelled.
* PaliGemma (processing_paligemma.py): (image / patch)^2 <image> tokens before
  <bos> and the prompt; the projector keeps one token per patch.
"""

from __future__ import annotations

import math
from typing import Any

from freezelab.tokens.layout import ImageLayout, Size, TokenError, vision_int


def _square(config: dict[str, Any], size: Size | None) -> tuple[int, int, Size]:
    side = vision_int(config, "image_size")
    grid = side // vision_int(config, "patch_size")
    return side, grid, size or (side, side)


def gemma3(config: dict[str, Any], size: Size | None, settings: dict[str, Any]) -> ImageLayout:
    if settings.get("do_pan_and_scan"):
        raise TokenError("Gemma 3 pan-and-scan crops are not modelled: count with do_pan_and_scan off")
    side, grid, (h, w) = _square(config, size)
    tokens = int(config.get("mm_tokens_per_image") or 256)
    per_side = int(math.isqrt(tokens))
    if per_side * per_side != tokens or grid % per_side:
        raise TokenError(f"mm_tokens_per_image {tokens} does not pool a {grid}x{grid} patch grid evenly")
    pool = grid // per_side
    return ImageLayout(1, grid * grid, grid * grid, tokens, max(h, w), size=(h, w), resized=(side, side),
                       grid=(grid, grid), merge=pool * pool, special_tokens=4,
                       scheme=f"one {side}x{side} image, {pool}x{pool} average pooling to {tokens} soft tokens")


def paligemma(config: dict[str, Any], size: Size | None, settings: dict[str, Any]) -> ImageLayout:
    side, grid, (h, w) = _square(config, size)
    return ImageLayout(1, grid * grid, grid * grid, grid * grid, max(h, w), size=(h, w), resized=(side, side),
                       grid=(grid, grid), scheme=f"one {side}x{side} image, one token per patch, "
                       "attended in full with the prompt (prefix)")
