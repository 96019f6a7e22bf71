"""The vision tower and projector stages of the families beyond LLaVA, and their decoder layers.

Each family's image path as its transformers 5.24 forward runs it, op by op on
the activations tape (freezelab.memory.blocks for the layers): `tiles` (Idefics3 /
SmolVLM, InternVL, Gemma 3, PaliGemma), `qwen` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL),
`pixtral` (Mistral 3). A path is (vision stages, projector stages, input bytes);
the stages' grad_params cover every parameter of their component, so whatever
trains gets its gradient and optimizer state where the backward reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from freezelab.memory.blocks import DecoderKind, decoder_block
from freezelab.memory.image_paths.pixtral import pixtral_inputs, pixtral_projector, pixtral_vision
from freezelab.memory.image_paths.qwen import merger_projector, qwen_inputs, qwen_vision
from freezelab.memory.image_paths.tiles import (
    gemma3_projector,
    internvl_projector,
    paligemma_projector,
    shuffle_projector,
    square_pixels,
    tile_pixels,
    tiles_inputs,
    tiles_vision,
)
from freezelab.memory.stages import Flow, Stage

ImagePath = tuple[Callable[[Flow, list[Stage]], tuple[bool, int, int]],
                  Callable[[Flow, list[Stage], bool, int, int], bool], Callable[[Flow], int]]
PATHS: dict[str, ImagePath] = {
    "idefics3": (tiles_vision, shuffle_projector, tiles_inputs),
    "smolvlm": (tiles_vision, shuffle_projector, tiles_inputs),
    "qwen2_vl": (qwen_vision, merger_projector, qwen_inputs),
    "qwen2_5_vl": (qwen_vision, merger_projector, qwen_inputs),
    "qwen3_vl": (qwen_vision, merger_projector, qwen_inputs),
    "internvl": (tiles_vision, internvl_projector, tile_pixels),
    "mistral3": (pixtral_vision, pixtral_projector, pixtral_inputs),
    "gemma3": (tiles_vision, gemma3_projector, square_pixels),
    "paligemma": (tiles_vision, paligemma_projector, square_pixels),
}


def image_stages(f: Flow, stages: list[Stage]) -> bool:
    """The vision and projector stages of a family in PATHS; returns whether the image features the LLM
    receives require grad."""
    vision, projector, _ = PATHS[f.index.model_type]
    feature_grad, rows, width = vision(f, stages)
    return projector(f, stages, feature_grad, rows, width)


_DECODERS: dict[DecoderKind, Callable[..., str]] = {}


def decoder_recipe(f: Flow) -> Callable[..., str] | None:
    """The decoder layer recipe of a family whose layers are not Llama's (None: Llama's)."""
    text = f.index.config.get("text_config") or {}
    model_type = f.index.model_type
    if model_type not in ("gemma3", "paligemma", "qwen3_vl"):
        return None
    act = str(text.get("hidden_activation") or text.get("hidden_act") or "silu")
    if model_type == "qwen3_vl":
        kind = DecoderKind(qk_norm=True, act=act)
    elif model_type == "gemma3":
        masked = f.layout is not None and f.images > 0  # image tokens attend to each other both ways
        kind = DecoderKind(gemma=True, qk_norm=True, attention="masked" if masked else "sdpa", act=act)
    else:
        kind = DecoderKind(gemma=True, attention="softcap", act=act, cap=float(text.get("attn_logit_softcapping") or 0))
    return _DECODERS.setdefault(kind, partial(decoder_block, kind=kind))


def input_bytes(f: Flow) -> int:
    """Bytes of the family's image inputs (pixel tensors, grids, masks), ids and labels aside."""
    return PATHS[f.index.model_type][2](f) if f.layout is not None and f.images > 0 else 0
