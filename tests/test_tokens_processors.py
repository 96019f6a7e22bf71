"""Image-token counts of every shipped family against the family's own transformers image processor, run on
synthetic images of the same height x width with the shipped checkpoint's processor settings.

From the processor's output each count follows the family's processor code: Qwen
`image_grid_thw.prod() // merge**2`, InternVL `image_seq_length * num_patches`, Idefics3 / SmolVLM
`image_seq_len * (rows * cols + 1)`, Pixtral `(h / 28) * (w / 28)` [IMG] tokens plus one break per row,
LLaVA-NeXT the model's own feature packing (tests/test_tokens.py) and the processor's tiles here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from freezelab.models import index_of
from freezelab.sources import resolve
from freezelab.tokens import image_layout, sequence_length
from freezelab.workload import Workload

SIZES = [(224, 224), (336, 672), (480, 640), (1080, 1920), (2000, 300), (50, 80), (900, 901)]


def _image(height: int, width: int) -> Image.Image:
    return Image.new("RGB", (width, height), (120, 60, 200))  # PIL sizes are (width, height)


def _settings(name: str) -> dict:
    return {k: v for k, v in resolve(name).processor.items() if k != "source"}


def _qwen(name, config, size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Qwen2VLImageProcessorPil(**_settings(name))(images=[_image(*size)], return_tensors="np")
    t, h, w = (int(x) for x in out["image_grid_thw"][0])
    merge = config["vision_config"]["spatial_merge_size"]
    patch = config["vision_config"]["patch_size"]
    return t * h * w // merge**2, 1, (h * patch, w * patch)


def _internvl(name, config, size):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    out = GotOcr2ImageProcessorPil(**_settings(name))(images=[_image(*size)], return_tensors="np")
    tiles = int(out["num_patches"][0])
    return config["image_seq_length"] * tiles, tiles, None


def _idefics3(name, config, size):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    out = Idefics3ImageProcessorPil(**_settings(name))(images=[_image(*size)], return_tensors="np",
                                                       return_row_col_info=True)
    rows, cols = out["rows"][0][0], out["cols"][0][0]
    vision = config["vision_config"]
    seq = (vision["image_size"] // vision["patch_size"]) ** 2 // config["scale_factor"] ** 2
    tiles = out["pixel_values"].shape[1]
    assert tiles == (rows * cols + 1 if rows else 1)
    return seq * tiles, tiles, None


def _pixtral(name, config, size):
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    settings = _settings(name)
    step = settings.pop("patch_size") * settings.pop("spatial_merge_size")  # PixtralProcessor passes patch * merge
    out = PixtralImageProcessorPil(**settings, patch_size=step)(images=[_image(*size)], return_tensors="np")
    h, w = (int(x) for x in out["image_sizes"][0])
    return (h // step) * (w // step), 1, (h, w)


def _fixed(cls_path):
    def count(name, config, size):
        module, cls = cls_path.rsplit(".", 1)
        processor = getattr(__import__(module, fromlist=[cls]), cls)(**_settings(name))
        out = processor(images=[_image(*size)], return_tensors="np")
        side = out["pixel_values"].shape[-1]
        assert out["pixel_values"].shape[-2:] == (side, side)
        grid = side // config["vision_config"]["patch_size"]
        tokens = config.get("mm_tokens_per_image", grid * grid)  # Gemma 3 pools to a fixed count
        return tokens, 1, (side, side)
    return count


PROCESSORS = {
    "qwen2-vl-2b-instruct": _qwen, "qwen2.5-vl-7b-instruct": _qwen, "qwen3-vl-8b-instruct": _qwen,
    "internvl3-1b-hf": _internvl,
    "smolvlm-256m-instruct": _idefics3, "smolvlm2-2.2b-instruct": _idefics3, "idefics3-8b-llama3": _idefics3,
    "mistral-small-3.1-24b-instruct-2503": _pixtral,
    "gemma-3-4b-it": _fixed("transformers.models.gemma3.image_processing_pil_gemma3.Gemma3ImageProcessorPil"),
    "paligemma2-3b-pt-224": _fixed("transformers.models.siglip.image_processing_pil_siglip.SiglipImageProcessorPil"),
}


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_token_count_equals_the_image_processor(name, size):
    index = index_of(resolve(name))
    expected, tiles, resized = PROCESSORS[name](name, index.config, size)
    layout = image_layout(index.config, size, processor=index.processor)
    assert layout.image_tokens == expected
    assert layout.tiles == tiles
    if resized is not None:
        assert layout.resized == resized


def test_llava_next_tiles_equal_its_image_processor():
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    index = index_of(resolve("llava-v1.6-mistral-7b"))
    processor = LlavaNextImageProcessorPil(image_grid_pinpoints=index.config["image_grid_pinpoints"],
                                           size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    for size in SIZES:
        out = processor(images=[_image(*size)], return_tensors="np")
        assert image_layout(index.config, size).tiles == out["pixel_values"].shape[1], size


def test_done_when_figures_and_several_sizes_per_sample():
    config = index_of(resolve("llava-v1.6-mistral-7b")).config
    assert image_layout(config, (336, 672)).image_tokens == 1752
    assert image_layout(config, (672, 672)).image_tokens == 2928
    assert image_layout(config, 672).image_tokens == 2928          # one side: a square
    w = Workload(images=2, image_sizes=((336, 672), (672, 672)), text_tokens=10)
    from freezelab.tokens import workload_sequence
    assert workload_sequence(config, w) == 1752 + 2928 + 10
    assert sequence_length(config, 10, 2, (336, 672)) == 2 * 1752 + 10


def test_qwen_tokens_are_the_resized_grid_over_28_squared():
    index = index_of(resolve("qwen2.5-vl-7b-instruct"))
    layout = image_layout(index.config, (448, 448), processor=index.processor)
    assert (layout.image_tokens, layout.special_tokens, layout.tile_tokens) == (256, 2, 1024)
    h, w = 1080, 1920
    got = image_layout(index.config, (h, w), processor=index.processor)
    assert got.image_tokens == (round(h / 28) * round(w / 28))  # within the pixel bounds: plain rounding
    video = image_layout(index.config, (448, 448), processor=index.processor, frames=8)
    assert (video.frames, video.image_tokens) == (4, 4 * 256)


def test_pixtral_counts_breaks_and_internvl_counts_a_thumbnail():
    index = index_of(resolve("mistral-small-3.1-24b-instruct-2503"))
    layout = image_layout(index.config, (1540, 1540), processor=index.processor)
    assert (layout.image_tokens, layout.special_tokens, layout.sequence_tokens) == (55 * 55, 55, 3080)
    intern = index_of(resolve("internvl3-1b-hf"))
    assert image_layout(intern.config, (448, 448), processor=intern.processor).sequence_tokens == 258
    assert image_layout(intern.config, (448, 896), processor=intern.processor).sequence_tokens == 770
    assert math.prod(image_layout(intern.config, (448, 896), processor=intern.processor).tile_grid) == 2


def test_images_are_synthetic_and_sized_as_asked():
    assert np.asarray(_image(30, 50)).shape == (30, 50, 3)


@pytest.mark.parametrize("settings,message", [
    ({"crop_to_patches": True, "max_patches": 10**9}, "max_patches must be a whole number from 1 to 256"),
    ({"size": {"longest_edge": 10**12}, "max_image_size": {"longest_edge": 512}}, "from 1 to 268,435,456"),
])
def test_processor_settings_from_a_checkpoint_are_bounded(settings, message):
    from freezelab.tokens import TokenError

    name = "internvl3-1b-hf" if "max_patches" in settings else "smolvlm-256m-instruct"
    config = index_of(resolve(name)).config
    with pytest.raises(TokenError, match=message):
        image_layout(config, (8192, 8192), processor=settings)
