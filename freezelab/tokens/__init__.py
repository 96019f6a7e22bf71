"""How many tokens a workload puts through each tower: the single source of these counts.

Pure Python (no torch): the analytic estimator, the simulated estimator and
the sanity step's batch builder all ask this package how many image tokens one
image of a given height x width becomes, how many tiles the vision tower sees,
and how long a sample's sequence is, so their numbers always agree.

Each family's arithmetic is its transformers image processor's and processor's
(5.24), ported per scheme: `anyres` (LLaVA, LLaVA-NeXT, OneVision), `dynamic`
(Qwen2-VL / 2.5-VL / 3-VL, Pixtral), `tiled` (InternVL, Idefics3 / SmolVLM),
`fixed` (Gemma 3, PaliGemma). The processor settings are the checkpoint's
(shipped configs carry them; a checkpoint directory's preprocessor_config.json),
else the processor classes' defaults. The tests run the real image processors
on synthetic images of the same sizes and compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from freezelab.tokens import dynamic, fixed, tiled
from freezelab.tokens.anyres import (  # noqa: F401  (the public names of this package)
    ANYRES_TYPES,
    LLAVA_TYPES,
    features_per_tile,
    has_cls,
    patch_grid,
    select_best_resolution,
    tile_tokens,
)
from freezelab.tokens.anyres import layout as _llava_layout
from freezelab.tokens.layout import ImageLayout, Size, TokenError, check_size

Scheme = Callable[[dict[str, Any], Size | None, dict[str, Any]], ImageLayout]
SCHEMES: dict[str, Scheme] = {
    "qwen2_vl": dynamic.qwen, "qwen2_5_vl": dynamic.qwen, "qwen3_vl": dynamic.qwen,
    "mistral3": dynamic.pixtral,
    "internvl": tiled.internvl,
    "idefics3": tiled.idefics3, "smolvlm": tiled.idefics3,
    "gemma3": fixed.gemma3,
    "paligemma": fixed.paligemma,
}
VIDEO_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _size(image_size: Any) -> Size | None:
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise TokenError(f"an image size is (height, width), got {image_size!r}")
        return check_size((image_size[0], image_size[1]))
    return check_size((image_size, image_size))


def image_layout(config: dict[str, Any], image_size: Any = None, images_per_sample: int = 1, *,
                 processor: dict[str, Any] | None = None, frames: int = 0) -> ImageLayout:
    """What one image becomes (image_size: a square side, or (height, width); None: the model's native
    size), or, with frames, one video of that many frames."""
    return _layout(config, image_size, images_per_sample, processor or {}, frames)


def _layout(config: dict[str, Any], image_size: Any, images_per_sample: int, settings: dict[str, Any],
            frames: int) -> ImageLayout:
    size = _size(image_size)
    model_type = str(config.get("model_type"))
    if frames:
        if model_type not in VIDEO_TYPES:
            raise TokenError(f"videos (frames) are modelled for Qwen2-VL, Qwen2.5-VL and Qwen3-VL; {model_type} "
                             "takes the frames as separate images (images per sample)")
        return dynamic.qwen(config, size, settings, frames)
    if model_type in SCHEMES:
        return SCHEMES[model_type](config, size, settings)
    out = _llava_layout(config, size, images_per_sample)
    if model_type not in LLAVA_TYPES:
        out = replace(out, notes=(*out.notes, f"{model_type}: token count assumed to be one token per patch of "
                                  "one tile (a family freezelab has not checked); the simulated estimate runs "
                                  "the real model, which checks it"))
    return out


def sample_layouts(config: dict[str, Any], workload: Any, processor: dict[str, Any] | None = None) -> list[ImageLayout]:
    """What each image (and the video, if any) of one sample of a freezelab.workload.Workload becomes."""
    sizes = workload.sizes()
    out = [image_layout(config, size, workload.images, processor=processor) for size in sizes]
    if workload.frames:
        video_size = sizes[0] if sizes else None
        out.append(image_layout(config, video_size, processor=processor, frames=workload.frames))
    return out


def combined(layouts: list[ImageLayout]) -> ImageLayout | None:
    """All images of a sample as one layout: tiles and tokens summed (every tile must have the same
    sequence length, as LLaVA's and the tiled families' do); None for a text-only sample."""
    if not layouts:
        return None
    first = layouts[0]
    if len(layouts) == 1:
        return first
    if any((lay.tile_tokens, lay.features_per_tile) != (first.tile_tokens, first.features_per_tile) for lay in layouts):
        raise TokenError("images of different vision sequence lengths cannot be combined into one layout")
    return replace(first, tiles=sum(lay.tiles for lay in layouts),
                   image_tokens=sum(lay.image_tokens for lay in layouts),
                   special_tokens=sum(lay.special_tokens for lay in layouts),
                   newline_tokens=sum(lay.newline_tokens for lay in layouts))


def image_tokens(config: dict[str, Any], image_size: Any = None, images_per_sample: int = 1,
                 processor: dict[str, Any] | None = None) -> int:
    """LLM placeholder positions one image takes."""
    return image_layout(config, image_size, images_per_sample, processor=processor).image_tokens


def sequence_length(config: dict[str, Any], text_tokens: int, images: int, image_size: Any = None,
                    processor: dict[str, Any] | None = None) -> int:
    """Tokens of one sample of `images` images of one size: their tokens plus the text tokens."""
    if images == 0:
        return text_tokens
    return images * image_layout(config, image_size, images, processor=processor).sequence_tokens + text_tokens


def workload_sequence(config: dict[str, Any], workload: Any, processor: dict[str, Any] | None = None) -> int:
    """Sequence length of one sample of a freezelab.workload.Workload."""
    return workload.text_tokens + sum(lay.sequence_tokens for lay in sample_layouts(config, workload, processor))
