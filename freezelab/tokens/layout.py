"""What one image becomes on its way into the model: the record every family's token count fills in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from freezelab.errors import FreezelabError

Size = tuple[int, int]          # (height, width) in pixels, as HF's image_sizes


class TokenError(FreezelabError):
    """The config lacks what is needed to count image tokens, or the image size is unusable."""


@dataclass(frozen=True)
class ImageLayout:
    """What one image (or one video) of a sample becomes."""

    tiles: int               # images the vision tower encodes (crops, tiles, base / global / thumbnail)
    tile_tokens: int         # vision-tower sequence length per tile (patches, + CLS if the tower has one)
    features_per_tile: int   # rows each tile hands on towards the projector, before merges
    image_tokens: int        # placeholder positions the image takes in the LLM sequence
    image_size: int          # the source image's longer side in pixels
    size: Size = (0, 0)      # the source image (height, width)
    resized: Size = (0, 0)   # what the image processor resized it to
    grid: Size = (0, 0)      # patch grid of one tile (rows, columns)
    tile_grid: Size = (0, 0)  # tiles (rows, columns) cut from the image; (0, 0) when not tiled
    base_tiles: int = 0      # base / global / thumbnail images on top of the tiles
    newline_tokens: int = 0  # image_newline features among image_tokens (LLaVA-NeXT)
    merge: int = 1           # patch features merged into one token (2x2 merge, pixel shuffle, pooling)
    special_tokens: int = 0  # other tokens the processor writes around the image (start / end, breaks, tags)
    frames: int = 1          # temporal patches (Qwen videos: frames / temporal_patch_size)
    scheme: str = ""         # how this family lays an image out, in words
    notes: tuple[str, ...] = field(default_factory=tuple)  # where the processor settings came from, caveats

    @property
    def sequence_tokens(self) -> int:
        """LLM sequence positions the image takes: its placeholders and the processor's tokens around them."""
        return self.image_tokens + self.special_tokens

    @property
    def vision_tokens(self) -> int:
        """Vision-tower sequence positions over all tiles."""
        return self.tiles * self.tile_tokens

    def describe(self) -> list[str]:
        """The layout in words, one fact per line (CLI, dashboard)."""
        h, w = self.size
        lines = [f"{self.scheme}" if self.scheme else "image"]
        if self.size != (0, 0):
            resized = f", resized to {self.resized[0]}x{self.resized[1]}" if self.resized not in ((0, 0), self.size) else ""
            lines.append(f"source {h}x{w} (height x width){resized}")
        if self.tile_grid != (0, 0):
            lines.append(f"tiles: {self.tile_grid[0]} x {self.tile_grid[1]} grid"
                         + (f" + {self.base_tiles} base/global" if self.base_tiles else ""))
        elif self.tiles > 1:
            lines.append(f"tiles: {self.tiles}")
        if self.grid != (0, 0):
            lines.append(f"patches per tile: {self.grid[0]} x {self.grid[1]} (vision sequence {self.tile_tokens})")
        if self.merge > 1:
            lines.append(f"merge: {self.merge} patch features -> 1 token")
        if self.newline_tokens:
            lines.append(f"newline tokens: {self.newline_tokens}")
        lines.append(f"image tokens: {self.image_tokens:,}"
                     + (f" (+ {self.special_tokens} around them)" if self.special_tokens else ""))
        return [*lines, *self.notes]


def vision_config(config: dict[str, Any]) -> dict[str, Any]:
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise TokenError("the config has no vision_config: cannot count image tokens")
    return vision


def side(value: Any, what: str) -> int:
    """A size given as an int or as [height, width] (InternVL writes image_size as a pair): its first side."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TokenError(f"{what} is missing or not a positive integer")
    return value


def vision_int(config: dict[str, Any], key: str) -> int:
    return side(vision_config(config).get(key), f"vision_config.{key}")


MAX_SETTING = 1 << 28        # processor settings are data from a checkpoint: sides, pixel counts, tile counts
MAX_TILES_SETTING = 256       # min_patches / max_patches: the tiling search is quadratic in it


def positive(settings: dict[str, Any], key: str, default: int) -> int:
    """An integer processor setting (nested dicts as `size.longest_edge`), or `default` when absent; a value
    a real processor would not have is refused before it decides any work."""
    value: Any = settings
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return default
    high = MAX_TILES_SETTING if key.endswith("_patches") else MAX_SETTING
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= high:
        raise TokenError(f"processor setting {key} must be a whole number from 1 to {high:,}, got {value!r}"[:200])
    return value


def check_size(size: Size) -> Size:
    h, w = size
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise TokenError(f"image size must be positive whole pixels (height x width), got {h}x{w}")
    return h, w
