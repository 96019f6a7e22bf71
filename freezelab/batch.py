"""Batches for the sanity step: synthetic ones built the way the calibration
protocol builds them, and one real example (image + prompt + answer) run
through a checkpoint's own processor.

Synthetic batch, per sample: random token ids, each image's placeholder tokens
(and the tokens its processor writes around them) right after the first token,
labels masking the first token and every image position, an all-ones attention
mask, random pixels. Every family gets the pixel layout and the number of
placeholder tokens its own forward expects (`freezelab.inputs`; a wrong count
makes the model raise), so a synthetic step costs what a real one of the same
shape costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezelab.errors import FreezelabError
from freezelab.inputs import InputError, pixel_inputs, special_ids, token_rows
from freezelab.tokens import ImageLayout, sample_layouts
from freezelab.workload import Workload

if TYPE_CHECKING:
    import torch

_TOKEN_LOW = 10        # random text ids avoid the first ids, where special tokens usually live
_TOKEN_HIGH = 1000     # ... and stay small, as the calibration protocol's do
TOKEN_TYPES = ("mm_token_type_ids", "token_type_ids")  # processor outputs with one entry per token


class BatchError(FreezelabError):
    """A batch cannot be built for this model and workload."""


@dataclass
class Batch:
    """Keyword arguments for `model(**inputs)` (labels included) and what they hold."""

    inputs: dict[str, torch.Tensor]
    kind: str               # "synthetic" | "example"
    batch: int              # samples
    seq_len: int            # tokens per sample, image positions included
    images: int             # images per sample
    image_tokens: int       # placeholder tokens per image (the first image's)
    image_size: tuple[int, int] | None = None  # source image (height, width) of a real example
    image_positions: int | None = None         # positions all images take per sample (None: images * image_tokens)
    sizes: dict[str, Any] | None = None        # the workload's image_size / image_sizes / frames it was built for

    @property
    def text_tokens(self) -> int:
        taken = self.images * self.image_tokens if self.image_positions is None else self.image_positions
        return self.seq_len - taken

    @property
    def supervised_tokens(self) -> int:
        """Label positions that count in the loss (labels are shifted by one inside the model)."""
        labels = self.inputs["labels"]
        return int((labels[:, 1:] != -100).sum())

    def workload(self, base: Workload) -> Workload:
        """`base` with the shape this batch really has (an example's length is the tokenizer's)."""
        sizes = self.sizes if self.sizes is not None else {
            "image_size": None, "image_sizes": (self.image_size,) if self.image_size else (), "frames": 0}
        return base.with_(batch=self.batch, text_tokens=self.text_tokens, images=self.images, **sizes)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "batch": self.batch, "seq_len": self.seq_len, "images": self.images,
                "image_tokens": self.image_tokens, "text_tokens": self.text_tokens,
                "supervised_tokens": self.supervised_tokens,
                "pixel_values": list(self.inputs["pixel_values"].shape) if "pixel_values" in self.inputs else None}


# -- synthetic --------------------------------------------------------------------

def _random_text(shape: tuple[int, int], vocab: int, avoid: set[int], gen: torch.Generator) -> torch.Tensor:
    import torch

    high = min(_TOKEN_HIGH, vocab - 20)
    if high <= _TOKEN_LOW + len(avoid):
        raise BatchError(f"the text vocabulary ({vocab} tokens) is too small for a synthetic batch")
    ids = torch.randint(_TOKEN_LOW, high, shape, generator=gen)
    for token in avoid:  # a random id equal to a placeholder would change the image-token count
        ids[ids == token] = _TOKEN_LOW
    return ids


def split_layouts(config: dict[str, Any], workload: Workload,
                  processor: dict[str, Any] | None) -> tuple[list[ImageLayout], ImageLayout | None]:
    """The images of one sample and its video (None without frames)."""
    layouts = sample_layouts(config, workload, processor)
    if workload.frames:
        return layouts[:-1], layouts[-1]
    return layouts, None


def synthetic(config: dict[str, Any], workload: Workload, *, device: str = "cpu",
              pixel_dtype: torch.dtype | None = None, seed: int = 0,
              processor: dict[str, Any] | None = None) -> Batch:
    """The calibration protocol's batch for any supported family (images=0: text only).

    `config` is a full config dict (ModelIndex.config); placeholder counts come from freezelab.tokens."""
    import torch

    if workload.text_tokens < 2:
        raise BatchError("text_tokens must be at least 2: the first token and the image tokens carry no "
                         "label, so at least one more token is needed for a loss")
    gen = torch.Generator().manual_seed(seed)
    layouts, video = split_layouts(config, workload, processor)
    vocab = config["text_config"]["vocab_size"]
    try:
        inputs = token_rows(config, layouts, video, workload.text_tokens, workload.batch,
                            lambda shape: _random_text(shape, vocab, special_ids(config), gen))
        inputs.update(pixel_inputs(config, layouts, video, workload.batch,
                                   lambda shape: torch.randn(*shape, generator=gen)))
    except InputError as err:
        raise BatchError(str(err)) from None
    seq = int(inputs["input_ids"].shape[1])
    positions = sum(lay.sequence_tokens for lay in layouts) + (video.sequence_tokens if video else 0)
    first = layouts[0] if layouts else None
    return Batch(_to(inputs, device, pixel_dtype), "synthetic", workload.batch, seq, workload.images,
                 first.image_tokens if first else 0, None, positions,
                 {"image_size": workload.image_size, "image_sizes": workload.image_sizes, "frames": workload.frames})


def _to(inputs: dict[str, torch.Tensor], device: str, pixel_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in inputs.items():
        dtype = pixel_dtype if key.startswith("pixel_values") and pixel_dtype is not None else None
        out[key] = value.to(device=device, dtype=dtype)
    return out


# -- a real example through the checkpoint's processor ------------------------------

@dataclass(frozen=True)
class Example:
    """An image (a path or a PIL image), the prompt about it and the answer to learn."""

    image: Any
    prompt: str
    answer: str


def load_processor(directory: Path) -> Any:
    """The checkpoint's processor (tokenizer + image processor), from local files only."""
    from transformers import AutoProcessor

    try:
        # trust_remote_code=False: with None, transformers would ask on the terminal whether to run shipped code
        processor = AutoProcessor.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BatchError(f"{directory}: no usable processor/tokenizer files for a real example "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise BatchError(f"{directory}: its processor has no image processor and tokenizer")
    return processor


def _open_image(image: Any) -> Any:
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(str(image)).expanduser()
    if not path.is_file():
        raise BatchError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise BatchError(f"{path}: not a readable image ({err})") from None


def _prompt_text(processor: Any, prompt: str) -> str:
    """The prompt as the model was trained to see it, with exactly one image placeholder."""
    token = processor.image_token
    if token in prompt:
        return prompt
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"{token}\n{prompt}"


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.repeat(n, *[1] * (t.dim() - 1))


def example(processor: Any, item: Example, workload: Workload, *, device: str = "cpu",
            pixel_dtype: torch.dtype | None = None) -> Batch:
    """One real sample, repeated to the workload's batch size; labels cover only the answer.

    Prompt and answer are tokenized separately and joined, so the boundary between
    what is masked and what is learned is exact whatever the tokenizer merges."""
    import torch

    if not item.answer.strip():
        raise BatchError("the answer is empty: there would be nothing to learn")
    img = _open_image(item.image)
    text = _prompt_text(processor, item.prompt)
    if text.count(processor.image_token) != 1:
        raise BatchError(f"the prompt must hold exactly one {processor.image_token} placeholder")
    try:
        prompt = processor(images=img, text=text, return_tensors="pt")
    except (ValueError, TypeError, RuntimeError) as err:
        raise BatchError(f"the processor could not read this example: {err}") from None
    tokenizer = processor.tokenizer
    answer = tokenizer(item.answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer = [*answer, tokenizer.eos_token_id]
    answer_ids = torch.tensor([answer], dtype=torch.long)
    ids = torch.cat([prompt["input_ids"], answer_ids], dim=1)
    labels = torch.cat([torch.full_like(prompt["input_ids"], -100), answer_ids], dim=1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    inputs.update({k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask")})
    for key in TOKEN_TYPES:  # per-token types follow the ids: the answer is text (PaliGemma: the suffix)
        if key in inputs:
            fill = 1 if type(processor).__name__.startswith("PaliGemma") else 0
            inputs[key] = torch.cat([inputs[key], torch.full_like(answer_ids, fill, dtype=inputs[key].dtype)], dim=1)
    inputs = {k: _repeat(v, workload.batch) for k, v in inputs.items()}
    per_image = int((prompt["input_ids"] == processor.image_token_id).sum())
    return Batch(_to(inputs, device, pixel_dtype), "example", workload.batch, ids.shape[1], 1, per_image,
                 (img.height, img.width))
