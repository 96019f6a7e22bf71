"""The training workload a memory estimate or a sanity step is computed for.

Pure data: no torch import, so the CLI and the UI can validate and serialise a
workload before anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

from freezelab.choices import member
from freezelab.errors import FreezelabError


class Dtype(StrEnum):
    """The parameter dtype."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Autocast(StrEnum):
    """The autocast dtype, or none."""

    NONE = "none"
    BF16 = "bf16"
    FP16 = "fp16"


class Optimizer(StrEnum):
    """The optimizer a step uses (built in freezelab.optimizers)."""

    ADAMW = "adamw"
    ADAMW_FUSED = "adamw-fused"
    SGD = "sgd"
    SGD_MOMENTUM = "sgd-momentum"
    ADAMW_8BIT = "adamw-8bit"
    ADAFACTOR = "adafactor"
    PAGED_ADAMW = "paged-adamw"            # bitsandbytes PagedAdamW: 32-bit state in CUDA unified memory
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"  # bitsandbytes PagedAdamW8bit


class Sharding(StrEnum):
    """How training state is split across data-parallel GPUs."""

    DDP = "ddp"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO3 = "zero3"
    FSDP = "fsdp"


class Attention(StrEnum):
    """The attention implementation."""

    SDPA = "sdpa"
    EAGER = "eager"


# The plain values, in the order menus and --help list them.
DTYPES = tuple(d.value for d in Dtype)
AUTOCAST = tuple(a.value for a in Autocast)
OPTIMIZERS = tuple(o.value for o in Optimizer)
SHARDING = tuple(s.value for s in Sharding)
ATTENTION = tuple(a.value for a in Attention)

DTYPE_BYTES = {Dtype.BF16: 2, Dtype.FP16: 2, Dtype.FP32: 4}
TORCH_DTYPE_NAMES = {Dtype.BF16: "bfloat16", Dtype.FP16: "float16", Dtype.FP32: "float32"}

# Upper bounds keep a hostile or mistyped value from turning into a huge
# allocation or a hung worker; they are far above any real single-node run.
LIMITS = {
    "batch": 4096,
    "text_tokens": 1_048_576,
    "images": 64,
    "image_size": 8192,
    "gpus": 4096,
    "frames": 1024,
}


class WorkloadError(FreezelabError):
    """A workload value is out of range or of the wrong kind."""


@dataclass(frozen=True)
class Workload:
    """One training step's shape and numerics.

    `text_tokens` counts the non-image tokens of one sample; image tokens are
    derived from the model config (see `freezelab.tokens`). Image sizes matter
    for any-res, tiled and dynamic-resolution models: `image_size` is a square
    side, `image_sizes` (height, width) pairs, one for all images of a sample or
    one per image; neither means the model's native size. `frames` adds one
    video of that many frames to each sample (Qwen2-VL family).
    """

    batch: int = 1
    text_tokens: int = 64
    images: int = 1
    image_size: int | None = None  # a square source image side in pixels
    dtype: Dtype = Dtype.BF16
    autocast: Autocast = Autocast.NONE
    optimizer: Optimizer = Optimizer.ADAMW
    grad_ckpt: bool = False
    attn: Attention = Attention.SDPA
    gpus: int = 1
    sharding: Sharding = Sharding.DDP
    offload_optimizer: bool = False
    image_sizes: tuple[tuple[int, int], ...] = ()  # (height, width) per image of a sample, or one for all
    frames: int = 0

    def __post_init__(self) -> None:
        validate(self)

    def sizes(self) -> list[tuple[int, int] | None]:
        """The (height, width) of each image of one sample (None: the model's native size)."""
        if self.image_sizes:
            sizes = list(self.image_sizes)
            return sizes * self.images if len(sizes) == 1 else sizes
        side = self.image_size
        return [(side, side) if side else None] * self.images

    def to_dict(self) -> dict[str, Any]:
        """Plain data: each choice as its string value."""
        data = {k: v.value if isinstance(v, StrEnum) else v for k, v in asdict(self).items()}
        data["image_sizes"] = [list(s) for s in self.image_sizes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WorkloadError(f"unknown workload field(s): {', '.join(unknown)}")
        return cls(**data)

    def with_(self, **changes: Any) -> Workload:
        return replace(self, **changes)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkloadError(f"{name} must be a whole number, got {value!r}")
    high = LIMITS[name]
    if not low <= value <= high:
        shown = f"{value:,}" if abs(value) < 10**15 else f"{value:.3g}"  # 1e300 from a number box: not 300 digits
        raise WorkloadError(f"{name} must be between {low} and {high:,}, got {shown}")


def parse_size(text: str) -> int | tuple[int, int]:
    """`336x672` (height x width) or `336` (a square side), as the CLI and the dashboard take them."""
    parts = str(text).strip().lower().replace("×", "x").split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise WorkloadError(f"image size {str(text)[:40]!r}: give height x width in pixels (e.g. 336x672) or one side")
    sides = [int(p) for p in parts]
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """`336x672, 672x672` (one per image, or one for all) as (height, width) pairs; empty: ()."""
    out = []
    for item in str(text or "").replace(";", ",").split(","):
        if item.strip():
            size = parse_size(item)
            out.append(size if isinstance(size, tuple) else (size, size))
    return tuple(out)


def sizes_text(w: Workload) -> str:
    """The image sizes of `w` as the dashboard shows them (empty: the model's native size)."""
    if w.image_sizes:
        return ", ".join(f"{h}x{wd}" for h, wd in w.image_sizes)
    return f"{w.image_size}x{w.image_size}" if w.image_size else ""


def _image_sizes(w: Workload) -> tuple[tuple[int, int], ...]:
    """image_sizes as a tuple of (height, width) pairs, each side within bounds; one pair for all images or
    one per image; not together with image_size."""
    raw = w.image_sizes
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise WorkloadError(f"image_sizes must be a list of [height, width] pairs, got {raw!r}"[:200])
    if len(raw) > LIMITS["images"]:
        raise WorkloadError(f"image_sizes lists {len(raw)} sizes; at most {LIMITS['images']} images per sample")
    out = []
    for pair in raw:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise WorkloadError(f"each image size is a [height, width] pair, got {pair!r}"[:200])
        for side in pair:
            _check_int("image_size", side, 1)
        out.append((pair[0], pair[1]))
    if out and w.image_size is not None:
        raise WorkloadError("give image_size (a square side) or image_sizes (height x width), not both")
    if len(out) > 1 and len(out) != w.images:
        raise WorkloadError(f"{len(out)} image sizes for {w.images} image(s) per sample: give one size for all "
                            "images, or one per image")
    return tuple(out)


# The fields that hold a choice, in the order they are checked.
CHOICES: dict[str, type[StrEnum]] = {"dtype": Dtype, "autocast": Autocast, "optimizer": Optimizer,
                                     "sharding": Sharding, "attn": Attention}


def _choice(name: str, value: Any, choice: type[StrEnum]) -> StrEnum:
    """The member whose value `value` is (a plain string or a member), or a WorkloadError."""
    found = member(choice, value)
    if found is None:
        shown = str(value) if isinstance(value, str) else value  # another enum's member: by its value
        raise WorkloadError(f"{name} must be one of {', '.join(choice)}; got {shown!r}")
    return found


def validate(w: Workload) -> None:
    """Check every field; a choice given as a plain string becomes its enum member."""
    _check_int("batch", w.batch, 1)
    _check_int("text_tokens", w.text_tokens, 1)
    _check_int("images", w.images, 0)
    _check_int("gpus", w.gpus, 1)
    if w.image_size is not None:
        _check_int("image_size", w.image_size, 1)
    _check_int("frames", w.frames, 0)
    object.__setattr__(w, "image_sizes", _image_sizes(w))  # frozen: set once, at creation
    for name, choice in CHOICES.items():
        object.__setattr__(w, name, _choice(name, getattr(w, name), choice))  # frozen: set once, at creation
    if not isinstance(w.grad_ckpt, bool) or not isinstance(w.offload_optimizer, bool):
        raise WorkloadError("grad_ckpt and offload_optimizer must be true or false")
    if w.autocast != Autocast.NONE and w.dtype != Dtype.FP32 and w.autocast != w.dtype:
        raise WorkloadError(
            f"autocast {w.autocast} with {w.dtype} parameters mixes two 16-bit types; "
            "use fp32 parameters with autocast, or no autocast"
        )
