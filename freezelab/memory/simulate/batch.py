"""The batch of a simulated step, laid out as the model's processor and the calibration
protocol lay it out (`freezelab.inputs`, the same builder as the sanity step's): input_ids with
each family's placeholders, its pixel tensors and grids, labels with the prompt masked, and an
all-ones attention mask. Ids, masks and grids are real tensors (booked by the ledger), and so are the
pixels of the families whose forward reads them: the model's integer bookkeeping runs on their values
(`freezelab.memory.fake.concrete`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from freezelab.batch import split_layouts
from freezelab.errors import SimulationError
from freezelab.inputs import InputError, pixel_inputs, special_ids, token_rows
from freezelab.memory.simulate.run import Run
from freezelab.tokens import ImageLayout, TokenError


def layouts(run: Run) -> tuple[list[ImageLayout], ImageLayout | None]:
    """What each image of a sample (and its video) becomes (freezelab.tokens); the model's forward
    re-checks the token counts against the features it produces."""
    try:
        return split_layouts(run.cfg.to_dict(), run.w, run.processor)
    except TokenError as err:
        raise SimulationError(f"the image tokens cannot be counted: {err}") from None


def _text_id(config: dict[str, Any]) -> int:
    """One ordinary token id (the protocol's random ids only have to miss every special one)."""
    avoid = special_ids(config)
    return next(i for i in range(10, 10 + len(avoid) + 1) if i not in avoid)


# Families whose forward reads pixel values: Idefics3 / SmolVLM drop all-zero padding tiles by value.
REAL_PIXELS = ("idefics3", "smolvlm")
MAX_REAL_TOKENS = 1 << 26           # ids, labels and masks are real tensors: a bound on what they may take
MAX_REAL_PIXEL_BYTES = 4 << 30


def _pixels(run: Run, dtype: torch.dtype) -> Callable[[tuple[int, ...]], torch.Tensor]:
    """Real pixels where the forward reads their values (bounded), else fake ones (shape only)."""
    if run.model_type not in REAL_PIXELS:
        return lambda shape: torch.empty(shape, dtype=dtype)

    def real(shape: tuple[int, ...]) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_REAL_PIXEL_BYTES:
            raise SimulationError(f"the simulated batch's pixels would take {nbytes / 2**30:.1f} GiB of real memory "
                                  f"(this family's forward reads them); at most {MAX_REAL_PIXEL_BYTES >> 30} GiB")
        with unset_fake_temporarily():
            return torch.ones(shape, dtype=dtype)
    return real


def make_batch(run: Run) -> dict[str, Any]:
    w, config = run.w, run.cfg.to_dict()
    images, video = layouts(run)
    pix_dtype = run.autocast_dtype or run.dtype  # measure.py: bf16 pixels under autocast
    text_id = _text_id(config)
    tokens = w.batch * (w.text_tokens + sum(lay.sequence_tokens for lay in images) + (video.sequence_tokens if video else 0))
    if tokens > MAX_REAL_TOKENS:
        raise SimulationError(f"the simulated batch holds {tokens:,} tokens; at most {MAX_REAL_TOKENS:,} are simulated")
    try:
        with unset_fake_temporarily():  # real ids; the ledger still books them
            batch = token_rows(config, images, video, w.text_tokens, w.batch,
                               lambda shape: torch.full(shape, text_id, dtype=torch.long))
        batch.update(pixel_inputs(config, images, video, w.batch, _pixels(run, pix_dtype)))
    except InputError as err:
        raise SimulationError(str(err)) from None
    per_sample = sum(lay.image_tokens for lay in images) + (video.image_tokens if video else 0)
    seq = int(batch["input_ids"].shape[1])
    run.image_tokens_total = per_sample * w.batch
    run.details.update(image_tokens_per_image=images[0].image_tokens if images else 0, seq_len=seq,
                       image_tokens_per_sample=per_sample)
    if images and images[0].tiles > 1:
        run.details["crops_per_image"] = images[0].tiles
    return batch
