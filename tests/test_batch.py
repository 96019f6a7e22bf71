"""Batches: the calibration protocol's synthetic batch for every class (proven by real forwards, which
raise on a wrong image-token count), and a real example through a checkpoint's processor."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_configs import KINDS, TINY, WORDS, config, make_image, make_processor_dir

from freezelab.batch import Batch, BatchError, Example, example, load_processor, synthetic
from freezelab.families import config_from_dict, model_class
from freezelab.workload import Workload

IMAGE_ID = TINY["image_token_index"]
TINY_TOKENS = (TINY["vision_config"]["image_size"] // TINY["vision_config"]["patch_size"]) ** 2  # CLIP, CLS dropped


def _model(cfg: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = model_class(cfg["model_type"])(config_from_dict(cfg))
    model.config.use_cache = False
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[dict, torch.nn.Module]]:
    """Each class's model and its full config dict (what ModelIndex.config holds)."""
    out = {}
    for kind in KINDS:
        model = _model(config(kind))
        out[kind] = (model.config.to_dict(), model)
    return out


# -- the synthetic layout, computed from the config ------------------------------------

def test_tiny_batch_layout_matches_the_protocol():
    w = Workload(batch=3, text_tokens=10, images=1, dtype="fp32")
    b = synthetic(config("llava"), w, seed=0)
    ids, labels = b.inputs["input_ids"], b.inputs["labels"]
    assert b.image_tokens == TINY_TOKENS == 16
    assert ids.shape == (3, 10 + 16) and b.seq_len == 26 and b.text_tokens == 10
    assert (ids[:, 1:17] == IMAGE_ID).all()
    assert int((ids == IMAGE_ID).sum()) == 3 * 16  # no random text id collides with the placeholder
    assert (labels[:, :17] == -100).all() and torch.equal(labels[:, 17:], ids[:, 17:])
    assert torch.equal(b.inputs["attention_mask"], torch.ones_like(ids))
    assert b.inputs["pixel_values"].shape == (3, 3, 56, 56)
    assert b.supervised_tokens == 3 * 9  # shifted labels: positions 17..25 predict 18..26


def test_several_images_per_sample_are_consecutive_after_the_first_token():
    b = synthetic(config("llava"), Workload(batch=2, text_tokens=5, images=3, dtype="fp32"))
    ids = b.inputs["input_ids"]
    assert ids.shape == (2, 5 + 3 * 16)
    assert (ids[:, 1:49] == IMAGE_ID).all() and not (ids[:, 49:] == IMAGE_ID).any()
    assert b.inputs["pixel_values"].shape == (6, 3, 56, 56)


def test_text_only_batch_has_no_pixels_and_masks_only_the_first_token():
    b = synthetic(config("llava"), Workload(batch=2, text_tokens=8, images=0, dtype="fp32"))
    assert "pixel_values" not in b.inputs and b.image_tokens == 0 and b.seq_len == 8
    labels = b.inputs["labels"]
    assert (labels[:, 0] == -100).all() and (labels[:, 1:] != -100).all()


def test_random_text_never_contains_special_ids_inside_its_range():
    cfg = config("llava")
    cfg["image_token_index"] = 20  # inside the random-id range [10, 492)
    b = synthetic(cfg, Workload(batch=64, text_tokens=200, images=1, dtype="fp32"), seed=3)
    assert int((b.inputs["input_ids"] == 20).sum()) == 64 * 16


def test_seed_decides_the_batch():
    w = Workload(batch=2, text_tokens=20, dtype="fp32")
    a, b, c = (synthetic(config("llava"), w, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
    assert torch.equal(a.inputs["pixel_values"], b.inputs["pixel_values"])
    assert not torch.equal(a.inputs["input_ids"], c.inputs["input_ids"])


def test_pixel_dtype_is_applied_to_pixels_only():
    b = synthetic(config("llava"), Workload(dtype="fp32"), pixel_dtype=torch.bfloat16)
    assert b.inputs["pixel_values"].dtype == torch.bfloat16 and b.inputs["input_ids"].dtype == torch.long


def test_one_text_token_is_refused():
    with pytest.raises(BatchError, match="at least 2"):
        synthetic(config("llava"), Workload(text_tokens=1, dtype="fp32"))


def test_example_workload_reports_the_real_shape():
    b = synthetic(config("next"), Workload(batch=2, text_tokens=7, images=1, image_size=40, dtype="fp32"))
    w = b.workload(Workload(dtype="fp32"))
    assert (w.batch, w.text_tokens, w.images, w.image_size) == (2, 7, 1, 40)


# -- every class, through its real forward ------------------------------------------------

SIZES = [None, 10, 40, 57, 100, 170]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("images", [1, 2])
def test_real_forward_accepts_the_batch(models, kind, images):
    cfg, model = models[kind]
    for size in SIZES:
        w = Workload(batch=2, text_tokens=5, images=images, image_size=size, dtype="fp32")
        b = synthetic(cfg, w)
        loss = model(**b.inputs).loss
        assert torch.isfinite(loss), (kind, size)
        assert int((b.inputs["input_ids"] == cfg["image_token_index"]).sum()) == 2 * images * b.image_tokens


@pytest.mark.parametrize("kind", KINDS)
def test_one_placeholder_too_many_makes_the_model_raise(models, kind):
    """The negative control: the forward really checks the count the batch builder computes."""
    cfg, model = models[kind]
    b = synthetic(cfg, Workload(batch=1, text_tokens=6, images=1, image_size=57, dtype="fp32"))
    ids = b.inputs["input_ids"].clone()
    ids[0, -1] = cfg["image_token_index"]
    with pytest.raises((ValueError, RuntimeError)):
        model(**{**b.inputs, "input_ids": ids})


def test_anyres_layouts_have_the_tiles_and_sizes_the_model_reads(models):
    cfg, _ = models["next"]
    b = synthetic(cfg, Workload(batch=2, text_tokens=5, images=1, image_size=40, dtype="fp32"))
    # 40x40 picks the 56x56 pinpoint: 2x2 tiles + the base crop; 2x2 patches per tile of 28 px
    assert b.inputs["pixel_values"].shape == (2, 5, 3, 28, 28)
    assert b.inputs["image_sizes"].tolist() == [[40, 40], [40, 40]]
    # base 4 patches + 4x4 grid + one newline per row
    assert b.image_tokens == 4 + 16 + 4


def test_onevision_multi_image_samples_are_untiled(models):
    cfg, _ = models["onevision"]
    b = synthetic(cfg, Workload(batch=2, text_tokens=5, images=3, image_size=170, dtype="fp32"))
    assert b.inputs["pixel_values"].shape == (6, 1, 3, 28, 28)
    assert b.inputs["batch_num_images"].tolist() == [3, 3]
    assert b.image_tokens == 4 + 1  # SigLIP (no CLS), "full": 4 patches and one newline


# -- a real example through the checkpoint's processor --------------------------------------

@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory):
    return make_processor_dir(tmp_path_factory.mktemp("ckpt"))


def test_example_labels_cover_exactly_the_answer(processor_dir, tmp_path):
    proc = load_processor(processor_dir)
    item = Example(make_image(tmp_path / "a.png"), "w1 w2", "w3 w4 w5")
    b = example(proc, item, Workload(batch=2, dtype="fp32"))
    ids, labels = b.inputs["input_ids"], b.inputs["labels"]
    answer = [WORDS.index(w) for w in ("w3", "w4", "w5")] + [WORDS.index("</s>")]
    n = ids.shape[1]
    assert b.kind == "example" and b.batch == 2 and ids.shape[0] == 2
    assert ids[0, -4:].tolist() == answer and labels[0, -4:].tolist() == answer
    assert (labels[:, : n - 4] == -100).all()
    assert b.image_tokens == TINY_TOKENS and int((ids[0] == IMAGE_ID).sum()) == TINY_TOKENS
    assert b.image_size == (40, 70)
    assert b.supervised_tokens == 2 * 4
    model = _model(config("llava"))
    assert torch.isfinite(model(**b.inputs).loss)


def test_example_prompt_with_its_own_placeholder_is_used_verbatim(processor_dir, tmp_path):
    proc = load_processor(processor_dir)
    b = example(proc, Example(make_image(tmp_path / "a.png"), "w1 <image> w2", "w3"), Workload(dtype="fp32"))
    ids = b.inputs["input_ids"][0].tolist()
    assert ids[0] == WORDS.index("w1") and ids[1:1 + TINY_TOKENS] == [IMAGE_ID] * TINY_TOKENS


@pytest.mark.parametrize("prompt,answer,match", [
    ("w1", "  ", "answer is empty"),
    ("<image> w1 <image>", "w2", "exactly one"),
])
def test_bad_examples_are_refused(processor_dir, tmp_path, prompt, answer, match):
    proc = load_processor(processor_dir)
    with pytest.raises(BatchError, match=match):
        example(proc, Example(make_image(tmp_path / "a.png"), prompt, answer), Workload(dtype="fp32"))


def test_missing_and_unreadable_images_are_refused(processor_dir, tmp_path):
    proc = load_processor(processor_dir)
    with pytest.raises(BatchError, match="no such image"):
        example(proc, Example(tmp_path / "none.png", "w1", "w2"), Workload(dtype="fp32"))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(BatchError, match="not a readable image"):
        example(proc, Example(tmp_path / "bad.png", "w1", "w2"), Workload(dtype="fp32"))


def test_directory_without_processor_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config("llava")))
    with pytest.raises(BatchError, match="no usable processor"):
        load_processor(tmp_path)


def test_batch_describe_is_plain_data():
    b = synthetic(config("llava"), Workload(batch=2, text_tokens=4, dtype="fp32"))
    assert isinstance(b, Batch)
    assert b.describe() == {"kind": "synthetic", "batch": 2, "seq_len": 20, "images": 1, "image_tokens": 16,
                            "text_tokens": 4, "supervised_tokens": 2 * 3, "pixel_values": [2, 3, 56, 56]}


def test_an_example_extends_per_token_types_over_the_answer(tmp_path):
    """Qwen's processors return mm_token_type_ids and PaliGemma's token_type_ids, one per prompt token: the
    answer appended after the prompt gets text (0), or PaliGemma's suffix type (1)."""
    import torch

    from freezelab.batch import Example, example
    from tiny_configs import make_image

    class Tokenizer:
        eos_token_id = 2

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [5 + i for i, _ in enumerate(text.split())]}

    def processor(name: str):
        class Processor:
            image_token, image_token_id, tokenizer = "<image>", 9, Tokenizer()

            def __call__(self, images, text, return_tensors):
                ids = torch.tensor([[1, 9, 9, 4]])
                types = torch.tensor([[0, 1, 1, 0]]) if name != "PaliGemmaProcessor" else torch.zeros(1, 4, dtype=torch.long)
                key = "token_type_ids" if name == "PaliGemmaProcessor" else "mm_token_type_ids"
                return {"input_ids": ids, "attention_mask": torch.ones_like(ids), key: types,
                        "pixel_values": torch.zeros(1, 3, 4, 4)}
        Processor.__name__ = name
        return Processor()

    image = make_image(tmp_path / "a.png")
    qwen = example(processor("Qwen2VLProcessor"), Example(image, "<image> what", "a cat"), Workload(batch=2))
    assert qwen.inputs["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0, 0, 0]] * 2
    assert qwen.inputs["input_ids"].shape == (2, 7) and qwen.image_tokens == 2
    pali = example(processor("PaliGemmaProcessor"), Example(image, "<image> what", "a cat"), Workload())
    assert pali.inputs["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]
