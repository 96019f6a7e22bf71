"""The model inputs of a synthetic batch, laid out per family as its processor lays them out.

Shared by the sanity step's synthetic batch (`freezelab.batch`) and the simulated
step (`freezelab.memory.simulate.batch`), so both put the same tensors through the
same forward. Per sample: the first text token, then each image as the processor
writes it (tokens around it, its placeholders), the video if any, then the rest of
the text; labels mask the first token and every image position. Per family the
pixel tensors the forward takes (transformers 5.24 signatures):

* LLaVA: pixel_values (images, 3, S, S); any-res (images, max tiles, 3, S, S) with
  image_sizes, OneVision also batch_num_images;
* Qwen2-VL family: flattened patches (patches, 3 * T * P * P) with image_grid_thw,
  mm_token_type_ids (1 image, 2 video); videos pixel_values_videos / video_grid_thw;
* InternVL: every tile of every image (tiles, 3, S, S);
* Gemma 3: (images, 3, S, S) with token_type_ids (1 on image tokens);
* PaliGemma: (images, 3, S, S) with token_type_ids (0 on the prefix: images and <bos>);
* Idefics3 / SmolVLM: (batch, tiles per sample, 3, S, S) with pixel_attention_mask;
* Mistral 3: (images, 3, H, W) padded to the largest, with image_sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from freezelab.errors import FreezelabError
from freezelab.tokens import ANYRES_TYPES, ImageLayout
from freezelab.tokens.layout import vision_int

if TYPE_CHECKING:
    import torch

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
Pixels = Callable[[tuple[int, ...]], "torch.Tensor"]   # a float tensor of this shape (random or fake)


class InputError(FreezelabError):
    """A batch cannot be laid out for this model and workload."""


def image_token_id(config: dict[str, Any]) -> int:
    image = config.get("image_token_id", config.get("image_token_index"))
    if image is None:
        raise InputError(f"{config.get('model_type')}: the config names no image token id")
    return int(image)


def special_ids(config: dict[str, Any]) -> set[int]:
    """Every token id the config names (image, video, start / end of image...): random text avoids them."""
    ids = set()
    for key, value in config.items():
        if (key.endswith("_token_id") or key.endswith("_token_index")) and isinstance(value, int):
            ids.add(value)
    return ids


def _spans(config: dict[str, Any], layouts: list[ImageLayout], video: ImageLayout | None) -> list[tuple[int, int, int]]:
    """(placeholder id, placeholders, tokens around them) per image, then the video."""
    image = image_token_id(config)
    out = [(image, lay.image_tokens, lay.special_tokens) for lay in layouts]
    if video is not None:
        out.append((int(config.get("video_token_id", image)), video.image_tokens, video.special_tokens))
    return out


def token_rows(config: dict[str, Any], layouts: list[ImageLayout], video: ImageLayout | None, text_tokens: int,
               batch: int, text: Callable[[tuple[int, int]], torch.Tensor]) -> dict[str, torch.Tensor]:
    """input_ids, labels, attention_mask (and the families' token type ids) of `batch` identical layouts."""
    import torch

    spans = _spans(config, layouts, video)
    around = sum(n + s for _, n, s in spans)
    seq = text_tokens + around
    ids = text((batch, seq))
    kinds = torch.zeros(batch, seq, dtype=torch.int32)   # 0 text, 1 image, 2 video placeholder
    prefix_first = config.get("model_type") == "paligemma"  # its processor puts the images before <bos>
    pos = 0 if prefix_first else 1
    for i, (token, n, special) in enumerate(spans):
        start = pos + special // 2
        ids[:, start:start + n] = token
        kinds[:, start:start + n] = 2 if video is not None and i == len(spans) - 1 else 1
        pos += n + special
    labels = ids.clone()
    labels[:, :pos + (1 if prefix_first else 0)] = -100   # the first token / <bos> and every image position
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model_type = config.get("model_type")
    if model_type in QWEN_TYPES:
        out["mm_token_type_ids"] = kinds
    elif model_type == "gemma3":
        out["token_type_ids"] = (kinds == 1).long()
    elif model_type == "paligemma":
        types = torch.ones_like(ids)
        types[:, :pos + 1] = 0                              # prefix: images and <bos>, attended in full
        out["token_type_ids"] = types
    return out


def _side(config: dict[str, Any]) -> int:
    return vision_int(config, "image_size")


def _llava(config: dict[str, Any], layouts: list[ImageLayout], batch: int, pixels: Pixels) -> dict[str, Any]:
    import torch

    side, n = _side(config), batch * len(layouts)
    if config.get("model_type") not in ANYRES_TYPES:
        return {"pixel_values": pixels((n, 3, side, side))}
    out: dict[str, Any] = {
        "pixel_values": pixels((n, max(lay.tiles for lay in layouts), 3, side, side)),
        "image_sizes": torch.tensor([list(lay.size) for lay in layouts] * batch, dtype=torch.long)}
    if config.get("model_type") == "llava_onevision":  # a multi-image sample's images go untiled
        out["batch_num_images"] = torch.tensor([len(layouts)] * batch, dtype=torch.long)
    return out


def _qwen(config: dict[str, Any], layouts: list[ImageLayout], batch: int, pixels: Pixels,
          video: bool = False) -> dict[str, Any]:
    import torch

    vision = config["vision_config"]
    patch, temporal = int(vision["patch_size"]), int(vision.get("temporal_patch_size") or 2)
    grids = [[lay.frames, *lay.grid] for lay in layouts] * batch
    patches = sum(t * h * w for t, h, w in grids)
    pixel_key, grid_key = ("pixel_values_videos", "video_grid_thw") if video else ("pixel_values", "image_grid_thw")
    return {pixel_key: pixels((patches, 3 * temporal * patch * patch)), grid_key: torch.tensor(grids, dtype=torch.long)}


def _idefics3(config: dict[str, Any], layouts: list[ImageLayout], batch: int, pixels: Pixels) -> dict[str, Any]:
    import torch

    side, tiles = _side(config), sum(lay.tiles for lay in layouts)
    return {"pixel_values": pixels((batch, tiles, 3, side, side)),
            "pixel_attention_mask": torch.ones(batch, tiles, side, side, dtype=torch.bool)}


def _pixtral(config: dict[str, Any], layouts: list[ImageLayout], batch: int, pixels: Pixels) -> dict[str, Any]:
    import torch

    height = max(lay.resized[0] for lay in layouts)
    width = max(lay.resized[1] for lay in layouts)
    return {"pixel_values": pixels((batch * len(layouts), 3, height, width)),
            "image_sizes": torch.tensor([list(lay.resized) for lay in layouts] * batch, dtype=torch.long)}


def pixel_inputs(config: dict[str, Any], layouts: list[ImageLayout], video: ImageLayout | None, batch: int,
                 pixels: Pixels) -> dict[str, Any]:
    """The pixel tensors (and the sizes / grids the forward needs) of `batch` samples with these images."""
    model_type = config.get("model_type")
    out: dict[str, Any] = {}
    if video is not None:
        out.update(_qwen(config, [video], batch, pixels, video=True))
    if not layouts:
        return out
    side = lambda: _side(config)  # noqa: E731 - only families with a fixed tile ask for it
    if model_type in QWEN_TYPES:
        out.update(_qwen(config, layouts, batch, pixels))
    elif model_type == "internvl":
        out["pixel_values"] = pixels((batch * sum(lay.tiles for lay in layouts), 3, side(), side()))
    elif model_type in ("idefics3", "smolvlm"):
        out.update(_idefics3(config, layouts, batch, pixels))
    elif model_type == "mistral3":
        out.update(_pixtral(config, layouts, batch, pixels))
    elif model_type in ("gemma3", "paligemma"):
        out["pixel_values"] = pixels((batch * len(layouts), 3, side(), side()))
    else:
        out.update(_llava(config, layouts, batch, pixels))
    return out
