"""The batch of a simulated step, laid out as the model's processor and the calibration
protocol lay it out: input_ids, pixel_values (+ image_sizes for any-res models), labels with
the prompt masked, and an all-ones attention mask."""

from __future__ import annotations

from typing import Any

import torch

from freezelab.memory.simulate.run import Run
from freezelab.tokens import ANYRES_TYPES, ImageLayout, image_layout


def layout(run: Run) -> ImageLayout:
    """What one image becomes (freezelab.tokens: tiling, unpadding, newlines); the model's
    forward re-checks the token count against the features it produces."""
    return image_layout(run.cfg.to_dict(), run.w.image_size, max(run.w.images, 1))


def image_inputs(run: Run, n_images: int) -> dict[str, Any]:
    """pixel_values (+ image_sizes / batch_num_images for any-res models) for `n_images`
    images, `workload.images` per sample, as the model's processor lays them out."""
    side = run.cfg.vision_config.image_size
    pix_dtype = run.autocast_dtype or run.dtype  # measure.py: bf16 pixels under autocast
    if run.model_type not in ANYRES_TYPES:
        if run.w.image_size not in (None, side):
            run.note_once("image_size only changes any-res models; this model resizes every "
                          f"image to its tower's {side}x{side}.")
        return {"pixel_values": torch.empty(n_images, 3, side, side, dtype=pix_dtype)}
    src = run.w.image_size or side
    n_patches = layout(run).tiles
    kw: dict[str, Any] = {
        "pixel_values": torch.empty(n_images, n_patches, 3, side, side, dtype=pix_dtype),
        "image_sizes": [[src, src]] * n_images,
    }
    if run.model_type == "llava_onevision":
        kw["batch_num_images"] = [run.w.images] * (n_images // max(run.w.images, 1))
    run.details["crops_per_image"] = n_patches
    return kw


def make_batch(run: Run, tokens_per_image: int) -> dict[str, Any]:
    w = run.w
    image_tokens = tokens_per_image * w.images
    seq = image_tokens + w.text_tokens
    ids = torch.empty(w.batch, seq, dtype=torch.long)
    batch: dict[str, Any] = {"input_ids": ids}
    if w.images:
        batch.update(image_inputs(run, w.batch * w.images))
    # labels = ids.clone() with the first 1 + image tokens positions at -100 (in place)
    labels = ids.clone()
    labels[:, : 1 + image_tokens] = -100
    batch["labels"] = labels
    # measure.py passes attention_mask=ones (no padding): transformers then drops it for
    # SDPA and uses is_causal (see fake.patches._fake_aware_ignore_mask).
    batch["attention_mask"] = torch.ones_like(ids)
    run.image_tokens_total = image_tokens * w.batch
    run.details.update(image_tokens_per_image=tokens_per_image, seq_len=seq,
                       image_tokens_per_sample=image_tokens)
    return batch
