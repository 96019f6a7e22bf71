"""Image-token counts against the real models' own feature packing (tiny random configs)."""

from __future__ import annotations

import pytest
import torch

from freezelab.families import config_from_dict, model_class
from freezelab.sources import resolve
from freezelab.tokens import (
    TokenError,
    image_layout,
    image_tokens,
    select_best_resolution,
    sequence_length,
)
from freezelab.workload import Workload

TILE = 28  # 2 x 2 patches of 14 px per tile keeps the real models tiny
PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84], [84, 84], [56, 112], [168, 168]]
TEXT = {"model_type": "qwen2", "vocab_size": 128, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


def _clip() -> dict:
    return {"model_type": "clip_vision_model", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": TILE, "patch_size": 14, "projection_dim": 8}


def _siglip() -> dict:
    return {"model_type": "siglip_vision_model", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": TILE, "patch_size": 14}


def _next_config(strategy: str = "default") -> dict:
    return {"model_type": "llava_next", "image_token_index": 100, "vision_feature_layer": -1,
            "vision_feature_select_strategy": strategy, "image_grid_pinpoints": PINPOINTS,
            "text_config": dict(TEXT), "vision_config": _clip()}


def _onevision_config() -> dict:
    pins = [[TILE * i, TILE * j] for i in range(1, 7) for j in range(1, 7)]
    return {"model_type": "llava_onevision", "image_token_index": 100, "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full", "image_grid_pinpoints": pins,
            "text_config": dict(TEXT), "vision_config": _siglip()}


def _packed_lengths(config: dict, size: int, batch_num_images: list[int] | None = None) -> tuple[int, list[int]]:
    """Tiles and per-image token counts from the model's own get_image_features."""
    torch.manual_seed(0)
    model = model_class(config["model_type"])(config_from_dict(config)).eval()
    hf = model.config
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    n_images = sum(batch_num_images) if batch_num_images else 1
    tiles = image_size_to_num_patches((size, size), hf.image_grid_pinpoints, TILE)
    pixels = torch.randn(n_images, tiles, 3, TILE, TILE)
    sizes = torch.tensor([[size, size]] * n_images)
    kwargs = {"batch_num_images": torch.tensor(batch_num_images)} if batch_num_images else {}
    with torch.no_grad():
        out = model.model.get_image_features(pixels, sizes, return_dict=True, **kwargs)
    return tiles, [f.shape[0] for f in out.pooler_output]


@pytest.mark.parametrize("size", [28, 40, 56, 70, 100, 140, 300, 1000])
def test_llava_next_matches_model_packing(size: int) -> None:
    # ("full" with a CLS tower cannot be packed by LLaVA-NeXT itself: the grid view needs CLS dropped)
    config = _next_config("default")
    tiles, lengths = _packed_lengths(config, size)
    layout = image_layout(config, size)
    assert layout.tiles == tiles
    assert layout.image_tokens == lengths[0]


@pytest.mark.parametrize("size", [28, 56, 90, 150, 168, 200, 500, 2000])
def test_onevision_matches_model_packing_incl_pooling(size: int) -> None:
    config = _onevision_config()
    tiles, lengths = _packed_lengths(config, size)
    layout = image_layout(config, size)
    assert layout.tiles == tiles
    assert layout.image_tokens == lengths[0]


def test_onevision_pooling_really_happens_for_large_images() -> None:
    # 2000 px picks the 6 x 6 grid: 12 x 12 = 144 rows > 9 tiles x 4, so bilinear pooling halves each side
    config = _onevision_config()
    layout = image_layout(config, 2000)
    assert layout.tiles == 37
    assert layout.image_tokens == 4 + 6 * 6 + 6


def test_onevision_multi_image_sample_uses_one_tile_each() -> None:
    config = _onevision_config()
    _, lengths = _packed_lengths(config, 200, batch_num_images=[2])
    layout = image_layout(config, 200, images_per_sample=2)
    assert layout.tiles == 1
    assert lengths == [layout.image_tokens, layout.image_tokens] == [5, 5]


def test_plain_llava_counts_patches_and_drops_cls() -> None:
    config = resolve("llava-1.5-7b").config
    layout = image_layout(config)
    assert (layout.tiles, layout.tile_tokens, layout.image_tokens) == (1, (336 // 14) ** 2 + 1, (336 // 14) ** 2)


def test_plain_llava_full_strategy_keeps_cls_and_siglip_has_none() -> None:
    interleave = resolve("llava-interleave-qwen-0.5b").config  # SigLIP 384/14, "full"
    assert image_tokens(interleave) == (384 // 14) ** 2
    tiny = dict(resolve("tiny").config, vision_feature_select_strategy="full")
    assert image_tokens(tiny) == (56 // 14) ** 2 + 1


def test_tiny_matches_its_config_image_seq_length() -> None:
    config = resolve("tiny").config
    assert image_tokens(config) == config["image_seq_length"]


def test_vipllava_drops_cls() -> None:
    assert image_tokens(resolve("vip-llava-7b").config) == 576


def test_shipped_llava_next_at_tower_resolution() -> None:
    # 336 x 336 picks the 336 x 672 grid (first of the least-waste ties): 3 tiles; unpadding keeps a
    # 24 x 24 block, plus 24 newlines, plus the 576-token base tile
    config = resolve("llava-v1.6-mistral-7b").config
    layout = image_layout(config)
    assert (layout.tiles, layout.image_tokens) == (3, 576 + 24 * 24 + 24)


def test_select_best_resolution_prefers_least_waste_on_ties() -> None:
    assert select_best_resolution((336, 336), [(336, 672), (672, 336), (672, 672)]) == (336, 672)
    # a tall image fits the tall grid exactly (no waste) rather than the square one
    assert select_best_resolution((1000, 500), [(336, 672), (672, 336), (672, 672)]) == (672, 336)


@pytest.mark.parametrize("size", [(1000, 500), (500, 1000), (10, 10), (3000, 2999), (672, 336)])
def test_select_best_resolution_equals_transformers(size: tuple[int, int]) -> None:
    from transformers.image_processing_utils import select_best_resolution as theirs

    pins = [tuple(p) for p in PINPOINTS]
    assert select_best_resolution(size, pins) == tuple(theirs(size, pins))


def test_sequence_length_text_only_and_with_images() -> None:
    config = resolve("llava-1.5-7b").config
    assert sequence_length(config, 64, 0) == 64
    assert sequence_length(config, 64, 2) == 64 + 2 * 576
    assert sequence_length(config, 448, 1) == 1024  # the calibration rows' batch 4 x 1024


def test_workload_sequence() -> None:
    from freezelab.tokens import workload_sequence

    config = resolve("llava-1.5-7b").config
    assert workload_sequence(config, Workload(batch=2, text_tokens=100, images=3)) == 100 + 3 * 576


def test_missing_vision_config_is_a_clear_error() -> None:
    with pytest.raises(TokenError, match="vision_config"):
        image_tokens({"model_type": "llava"})
    with pytest.raises(TokenError, match="image_grid_pinpoints"):
        image_tokens(dict(_next_config(), image_grid_pinpoints=None))
