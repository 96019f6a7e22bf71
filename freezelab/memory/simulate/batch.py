"""The batch of a simulated step, laid out as the model's processor and the calibration
protocol lay it out (`freezelab.inputs`, the same builder as the sanity step's): input_ids with
each family's placeholders, its pixel tensors and grids, labels with the prompt masked, and an
all-ones attention mask. Ids, masks, grids and pixels are real tensors (booked by the ledger):
the model's integer bookkeeping runs on their values (`freezelab.memory.fake.concrete`)."""

from __future__ import annotations

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


def make_batch(run: Run) -> dict[str, Any]:
    w, config = run.w, run.cfg.to_dict()
    images, video = layouts(run)
    pix_dtype = run.autocast_dtype or run.dtype  # measure.py: bf16 pixels under autocast
    text_id = _text_id(config)
    try:
        with unset_fake_temporarily():  # real tensors; the ledger still books them
            batch = token_rows(config, images, video, w.text_tokens, w.batch,
                               lambda shape: torch.full(shape, text_id, dtype=torch.long))
            batch.update(pixel_inputs(config, images, video, w.batch,
                                      lambda shape: torch.ones(shape, dtype=pix_dtype)))
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
