"""Tiny configs of each checked vision-language family beyond LLaVA (small dims, random weights), in the
layout of the shipped Hub configs, for real forwards and fake-tensor simulations in tests."""

from __future__ import annotations

import copy
from typing import Any

VOCAB = 300
IMAGE, VIDEO, START, END = 200, 201, 202, 203


def _text(model_type: str, **extra: Any) -> dict[str, Any]:
    return {"model_type": model_type, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0, **extra}


def _siglip(image_size: int, **extra: Any) -> dict[str, Any]:
    return {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": image_size, "patch_size": 14, "vision_use_head": False, **extra}


_QWEN_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32,
                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}

CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"model_type": "qwen2_vl", **_text("qwen2_vl"), "image_token_id": IMAGE, "video_token_id": VIDEO,
                 "vision_start_token_id": START, "vision_end_token_id": END,
                 "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
                 "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 32, "mlp_ratio": 2, "num_heads": 4,
                                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}},
    "qwen2_5_vl": {"model_type": "qwen2_5_vl", **_text("qwen2_5_vl"), "image_token_id": IMAGE,
                   "video_token_id": VIDEO, "vision_start_token_id": START, "vision_end_token_id": END,
                   "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
                   "vision_config": {**_QWEN_VISION, "window_size": 56, "fullatt_block_indexes": [1]}},
    "qwen3_vl": {"model_type": "qwen3_vl", "image_token_id": IMAGE, "video_token_id": VIDEO,
                 "vision_start_token_id": START, "vision_end_token_id": END, "tie_word_embeddings": False,
                 "text_config": _text("qwen3_vl_text", head_dim=8,
                                      rope_scaling={"mrope_interleaved": True, "mrope_section": [2, 1, 1],
                                                    "rope_type": "default"}),
                 "vision_config": {**_QWEN_VISION, "patch_size": 16, "num_position_embeddings": 16,
                                   "deepstack_visual_indexes": [0], "hidden_act": "gelu_pytorch_tanh"}},
    "internvl": {"model_type": "internvl", "image_token_id": IMAGE, "downsample_ratio": 0.5, "image_seq_length": 4,
                 "text_config": _text("qwen2"),
                 "vision_config": {"model_type": "internvl_vision", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": [56, 56],
                                   "patch_size": [14, 14], "attention_bias": True}},
    "gemma3": {"model_type": "gemma3", "image_token_index": IMAGE, "boi_token_index": START,
               "eoi_token_index": END, "mm_tokens_per_image": 4,
               "text_config": _text("gemma3_text", head_dim=8, sliding_window=16),
               "vision_config": _siglip(56)},
    "paligemma": {"model_type": "paligemma", "image_token_index": IMAGE, "projection_dim": 32,
                  "text_config": _text("gemma2", head_dim=8, num_image_tokens=16),
                  "vision_config": _siglip(56, projection_dim=32)},
    "idefics3": {"model_type": "idefics3", "image_token_id": IMAGE, "scale_factor": 2,
                 "text_config": _text("llama"),
                 "vision_config": {"model_type": "idefics3_vision", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 56,
                                   "patch_size": 14}},
    "smolvlm": {"model_type": "smolvlm", "image_token_id": IMAGE, "scale_factor": 2,
                "text_config": _text("llama"),
                "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 56,
                                  "patch_size": 14}},
    "mistral3": {"model_type": "mistral3", "image_token_index": IMAGE, "spatial_merge_size": 2,
                 "multimodal_projector_bias": False, "vision_feature_layer": -1,
                 "text_config": _text("mistral", head_dim=8),
                 "vision_config": {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 8,
                                   "image_size": 112, "patch_size": 14}},
}
FAMILIES = tuple(CONFIGS)


def config(family: str) -> dict[str, Any]:
    return copy.deepcopy(CONFIGS[family])
