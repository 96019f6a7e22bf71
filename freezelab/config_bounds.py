"""Sanity bounds on a config's sizes, checked before any model is built.

A config is data from the user (a path, an upload, a Hub repo). Building even
a meta-device model costs time per layer, and torch or transformers turn a
zero, negative or non-integer size into a ZeroDivisionError, a validation
error or a hang, so absurd values are refused first with one message naming
the field. The bounds sit far above every published vision-language model (and a
hypothetical 400B one): largest seen are about 130 layers, hidden size 16384,
vocabularies near 262k and vision grids of 64 x 64 patches.
"""

from __future__ import annotations

from typing import Any

from freezelab.errors import SourceError

MAX_LAYERS = 512                 # meta-device build time grows with the layer count (~3 s at 512)
MAX_IMAGE_SIDE = 8192            # the same bound as Workload.image_size
MAX_PATCHES = 65_536             # patches per image: a 256 x 256 grid
MAX_PINPOINTS = 1024             # any-res grid candidates (LLaVA-OneVision ships 36)

# field -> (lowest, highest) for every sub-config where it appears
BOUNDS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, MAX_LAYERS),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (1, 4096),
    "hidden_size": (1, 131_072),
    "intermediate_size": (1, 1_048_576),
    "projection_dim": (1, 131_072),
    "vocab_size": (1, 4_194_304),
    "max_position_embeddings": (1, 1 << 26),
    "image_size": (1, MAX_IMAGE_SIDE),
    "patch_size": (1, MAX_IMAGE_SIDE),
    "num_channels": (1, 16),
    "num_local_experts": (1, 1024),
    "num_experts": (1, 1024),
    "num_experts_per_tok": (1, 1024),
    "image_seq_length": (0, 1 << 20),
    "image_token_index": (0, 1 << 31),
    "image_token_id": (0, 1 << 31),
    # Qwen2-VL family vision configs name their sizes differently
    "depth": (1, MAX_LAYERS),
    "num_heads": (1, 1024),
    "embed_dim": (1, 131_072),
    "out_hidden_size": (1, 131_072),
    "spatial_merge_size": (1, 64),
    "temporal_patch_size": (1, 64),
    "num_position_embeddings": (1, MAX_PATCHES),
    # Gemma 3 / Idefics3 / SmolVLM image token counts
    "mm_tokens_per_image": (1, MAX_PATCHES),
    "scale_factor": (1, 64),
}
SUB_CONFIGS = ("text_config", "vision_config")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(origin: str, where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceError(f"{origin}: {where} must be a whole number, got {_show(value)}")
    if not low <= value <= high:
        raise SourceError(f"{origin}: {where} = {_show(value)} is outside {low:,}..{high:,}; the config looks corrupt")
    return value


PAIRED = ("image_size", "patch_size")  # InternVL writes these as [height, width]


def _first(origin: str, where: str, value: Any) -> Any:
    """A [height, width] pair's first side, both sides checked equal; anything else unchanged."""
    if isinstance(value, list) and len(value) == 2:
        low, high = BOUNDS[where.rpartition(".")[2]]
        first = _whole(origin, where, value[0], low, high)
        if _whole(origin, where, value[1], low, high) != first:
            raise SourceError(f"{origin}: {where} = {_show(value)}: only square sizes are supported")
        return first
    return value


def _sizes(origin: str, prefix: str, cfg: dict[str, Any]) -> None:
    cfg = {**cfg, **{k: _first(origin, prefix + k, cfg[k]) for k in PAIRED if cfg.get(k) is not None}}
    for key, (low, high) in BOUNDS.items():
        if cfg.get(key) is not None:
            _whole(origin, prefix + key, cfg[key], low, high)
    heads, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if heads is not None and kv is not None and heads % kv:
        raise SourceError(f"{origin}: {prefix}num_attention_heads ({heads}) must be a multiple of "
                          f"num_key_value_heads ({kv})")
    image, patch = cfg.get("image_size"), cfg.get("patch_size")
    if image is not None and patch is not None:
        if patch > image:
            raise SourceError(f"{origin}: {prefix}patch_size ({patch}) is larger than image_size ({image})")
        if (image // patch) ** 2 > MAX_PATCHES:
            raise SourceError(f"{origin}: {prefix}image_size / patch_size gives {(image // patch) ** 2:,} patches per "
                              f"image; at most {MAX_PATCHES:,} are accepted")


def _feature_layers(origin: str, config: dict[str, Any], vision: dict[str, Any]) -> None:
    """vision_feature_layer(s) index the tower's hidden states: embeddings plus one per layer."""
    layers = vision.get("num_hidden_layers")
    top = layers if layers is not None else MAX_LAYERS
    for key in ("vision_feature_layer", "vision_feature_layers"):
        value = config.get(key)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if len(items) > MAX_LAYERS + 1:
            raise SourceError(f"{origin}: {key} lists {len(items):,} layers")
        for item in items:
            _whole(origin, key, item, -(top + 1), top)


def _pinpoints(origin: str, config: dict[str, Any]) -> None:
    grid = config.get("image_grid_pinpoints")
    if grid is None:
        return
    if not isinstance(grid, list) or len(grid) > MAX_PINPOINTS:
        raise SourceError(f"{origin}: image_grid_pinpoints must be a list of at most {MAX_PINPOINTS} [height, width] pairs")
    for pair in grid:
        if not isinstance(pair, list) or len(pair) != 2:
            raise SourceError(f"{origin}: image_grid_pinpoints entries must be [height, width] pairs, got {_show(pair)}")
        for side in pair:
            _whole(origin, "image_grid_pinpoints", side, 1, MAX_IMAGE_SIDE)


def check_sizes(config: dict[str, Any], origin: str) -> None:
    """Raise SourceError naming the first absurd size (zero, negative, non-integer or beyond any real model)."""
    _sizes(origin, "", config)
    subs: dict[str, dict[str, Any]] = {}
    for name in SUB_CONFIGS:
        sub = config.get(name)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise SourceError(f"{origin}: {name} must be a JSON object, got {type(sub).__name__}")
        _sizes(origin, f"{name}.", sub)
        subs[name] = sub
    _feature_layers(origin, config, subs.get("vision_config", {}))
    _pinpoints(origin, config)
