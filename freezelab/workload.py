"""The training workload a memory estimate or a sanity step is computed for.

Pure data: no torch import, so the CLI and the UI can validate and serialise a
workload before anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from freezelab.errors import FreezelabError

DTYPES = ("bf16", "fp16", "fp32")
AUTOCAST = ("none", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw-fused", "sgd", "sgd-momentum", "adamw-8bit", "adafactor")
SHARDING = ("ddp", "zero1", "zero2", "zero3", "fsdp")
ATTENTION = ("sdpa", "eager")

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
TORCH_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# Upper bounds keep a hostile or mistyped value from turning into a huge
# allocation or a hung worker; they are far above any real single-node run.
LIMITS = {
    "batch": 4096,
    "text_tokens": 1_048_576,
    "images": 64,
    "image_size": 8192,
    "gpus": 4096,
}


class WorkloadError(FreezelabError):
    """A workload value is out of range or of the wrong kind."""


@dataclass(frozen=True)
class Workload:
    """One training step's shape and numerics.

    `text_tokens` counts the non-image tokens of one sample; image tokens are
    derived from the model config (see `freezelab.tokens`).
    """

    batch: int = 1
    text_tokens: int = 64
    images: int = 1
    image_size: int | None = None  # LLaVA-NeXT any-res: the source image side in pixels
    dtype: str = "bf16"
    autocast: str = "none"
    optimizer: str = "adamw"
    grad_ckpt: bool = False
    attn: str = "sdpa"
    gpus: int = 1
    sharding: str = "ddp"
    offload_optimizer: bool = False

    def __post_init__(self) -> None:
        validate(self)

    @property
    def param_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise WorkloadError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def validate(w: Workload) -> None:
    _check_int("batch", w.batch, 1)
    _check_int("text_tokens", w.text_tokens, 1)
    _check_int("images", w.images, 0)
    _check_int("gpus", w.gpus, 1)
    if w.image_size is not None:
        _check_int("image_size", w.image_size, 1)
    _check_choice("dtype", w.dtype, DTYPES)
    _check_choice("autocast", w.autocast, AUTOCAST)
    _check_choice("optimizer", w.optimizer, OPTIMIZERS)
    _check_choice("sharding", w.sharding, SHARDING)
    _check_choice("attn", w.attn, ATTENTION)
    if not isinstance(w.grad_ckpt, bool) or not isinstance(w.offload_optimizer, bool):
        raise WorkloadError("grad_ckpt and offload_optimizer must be true or false")
    if w.autocast != "none" and w.dtype != "fp32" and w.autocast != w.dtype:
        raise WorkloadError(
            f"autocast {w.autocast} with {w.dtype} parameters mixes two 16-bit types; "
            "use fp32 parameters with autocast, or no autocast"
        )
