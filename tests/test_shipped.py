"""Every shipped architecture: exact totals, published figures, components, and every preset's
count against an independent requires_grad sum on the meta-device model."""

from __future__ import annotations

import json

import pytest

from freezelab.anatomy import count
from freezelab.models import build
from freezelab.plans import PRESETS, apply, preset
from freezelab.sources import KNOWN_DIR, known_names, resolve

# Exact totals: llava-1.5-7b is the calibration measurement's total_params (real H100 run of
# llava-hf/llava-1.5-7b-hf's architecture); the others are the architectures' counts, which
# round to the Hub model cards' "Model size" (checked below from each config's _freezelab entry).
EXACT = {
    "llava-1.5-7b": 7_063_427_072,
    "llava-1.5-13b": 13_351_494_656,
    "llava-v1.6-mistral-7b": 7_566_747_648,
    "llava-v1.6-34b": 34_752_083_968,
    "llava-onevision-qwen2-0.5b": 893_675_552,
    "llava-onevision-qwen2-7b": 8_030_807_584,
    "llava-onevision-qwen2-72b": 73_181_570_592,
    "llava-interleave-qwen-0.5b": 864_031_264,
    "bakllava": 7_566_743_552,
    "vip-llava-7b": 7_080_214_528,
    "zero-nlp-qwen1.5-4b-clip": 4_263_056_896,
    # beyond the LLaVA classes (assets/configs/SOURCES.md): qwen2-vl-2b is the base checkpoint's
    # safetensors total_size / 2; internvl3 and mistral-small count the separate lm_head their
    # checkpoints store (1.88 GB of bf16 for internvl3-1b-hf)
    "qwen2-vl-2b-instruct": 2_208_985_600,
    "qwen2-vl-7b-instruct": 8_291_375_616,
    "qwen2.5-vl-3b-instruct": 3_754_622_976,
    "qwen2.5-vl-7b-instruct": 8_292_166_656,
    "qwen3-vl-2b-instruct": 2_127_532_032,
    "qwen3-vl-8b-instruct": 8_767_123_696,
    "internvl3-1b-hf": 938_193_024,
    "internvl3-8b-hf": 7_944_373_760,
    "gemma-3-4b-it": 4_300_079_472,
    "gemma-3-12b-it": 12_187_325_040,
    "smolvlm-256m-instruct": 256_484_928,
    "smolvlm2-2.2b-instruct": 2_246_784_880,
    "idefics3-8b-llama3": 8_462_086_384,
    "paligemma2-3b-pt-224": 3_032_242_416,
    "mistral-small-3.1-24b-instruct-2503": 24_011_361_280,
}
TIED = {"llava-onevision-qwen2-0.5b", "llava-interleave-qwen-0.5b", "qwen2-vl-2b-instruct", "qwen2.5-vl-3b-instruct",
        "qwen3-vl-2b-instruct", "gemma-3-4b-it", "gemma-3-12b-it", "paligemma2-3b-pt-224"}

# Each family's anatomy in transformers 5.24's parameter names, written out here (independent of the
# classifier, which finds the parts by object): (vision tower, projector parts, language model + head).
_LLAVA = ("model.vision_tower.", ("model.multi_modal_projector.", "model.image_newline"),
          ("model.language_model.", "lm_head."))
ANATOMY = {
    "llava": _LLAVA, "llava_next": _LLAVA, "llava_onevision": _LLAVA, "vipllava": _LLAVA,
    "qwen2_vl": ("model.visual.", ("model.visual.merger.",), ("model.language_model.", "lm_head.")),
    "qwen2_5_vl": ("model.visual.", ("model.visual.merger.",), ("model.language_model.", "lm_head.")),
    "qwen3_vl": ("model.visual.", ("model.visual.merger.", "model.visual.deepstack_merger_list."),
                 ("model.language_model.", "lm_head.")),
    "internvl": _LLAVA, "gemma3": _LLAVA, "paligemma": _LLAVA, "mistral3": _LLAVA,
    "idefics3": ("model.vision_model.", ("model.connector.",), ("model.text_model.", "lm_head.")),
    "smolvlm": ("model.vision_model.", ("model.connector.",), ("model.text_model.", "lm_head.")),
}
PRESET_NAMES = [n if n != "last-n" else "last-4" for n in PRESETS]


def card_figure(n: int) -> str:
    """The Hub's 'Model size' style: three significant figures, M or B."""
    unit, scale = ("B", 1e9) if n >= 1e9 else ("M", 1e6)
    return f"{n / scale:.3g}{unit}"


def test_card_figure_format():
    assert [card_figure(n) for n in (7_566_747_648, 893_675_552, 73_181_570_592)] == ["7.57B", "894M", "73.2B"]


def test_every_shipped_config_has_an_exact_figure():
    assert set(EXACT) == set(known_names())


@pytest.mark.parametrize("name", sorted(EXACT))
def test_totals_and_published_figures(name, shipped_indexes):
    index = shipped_indexes[name]
    assert index.total_params == EXACT[name]
    meta = json.loads((KNOWN_DIR / f"{name}.json").read_text())["_freezelab"]
    if meta["published_params"] is not None:
        assert meta["published_params"] == EXACT[name]
    if meta["published_rounded"]:
        assert card_figure(EXACT[name]) == meta["published_rounded"]
    assert bool(index.tied) == (name in TIED)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_components_found(name, shipped_indexes):
    index = shipped_indexes[name]
    cfg = index.config
    vision = cfg["vision_config"]
    assert len(index.layers["vision"]) == vision.get("num_hidden_layers", vision.get("depth"))
    assert len(index.layers["llm"]) == cfg["text_config"]["num_hidden_layers"]
    comps = {p.component for p in index.params}
    assert comps == {"vision", "projector", "llm"}
    if index.model_type in ("llava_next", "llava_onevision"):
        assert any(p.name.endswith("image_newline") and p.component == "projector" for p in index.params)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_component_counts_equal_sums_by_name(name, shipped_indexes):
    """vision / projector / llm counts against sums over the family's own module names (tied: once)."""
    from freezelab.anatomy import component_counts

    index = shipped_indexes[name]
    vision, projector, llm = ANATOMY[index.model_type]
    model = build(resolve(name), device="meta")
    sums = dict.fromkeys(("vision", "projector", "llm"), 0)
    for pname, p in model.named_parameters():  # each tensor once, under its first name
        part = ("projector" if pname.startswith(projector) else "vision" if pname.startswith(vision)
                else "llm" if pname.startswith(llm) else "unplaced")
        sums[part] = sums.get(part, 0) + p.numel()
    counts = component_counts(index, [True] * len(index.params))
    assert {c: counts[c].total for c in ("vision", "projector", "llm")} == sums
    head = model.get_output_embeddings().weight
    assert counts["lm_head"].total == head.numel()
    tied = head is model.get_input_embeddings().weight
    assert tied == (name in TIED)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_every_preset_matches_requires_grad_sum(name, shipped_indexes):
    index = shipped_indexes[name]
    model = build(resolve(name), device="meta")
    assert sum(p.numel() for p in model.parameters()) == index.total_params
    for p in PRESET_NAMES:
        res = apply(preset(p), model, index)
        independent = sum(t.numel() for t in model.parameters() if t.requires_grad)
        assert count(index, res.mask).trainable == independent, (name, p)


def test_llava_7b_calibration_counts(shipped_indexes):
    """The trainable counts the H100 calibration rows recorded for each plan."""
    index = shipped_indexes["llava-1.5-7b"]
    from freezelab.plans import Plan, Rule
    rows = {
        ("@projector",): 20_979_712,
        ("@projector", "@llm"): 6_759_919_616,
        ("@llm",): 6_738_939_904,
        ("@vision", "@projector"): 324_487_168,
        ("@projector", "@llm.layers[-4:]"): 830_513_152,
        ("@llm.layers[-4:]",): 809_533_440,
        ("@lm_head",): 131_334_144,
        ("@vision",): 303_507_456,
    }
    from freezelab.plans import resolve as resolve_plan
    for sels, expected in rows.items():
        plan = Plan(rules=tuple(Rule("train", s) for s in sels))
        assert count(index, resolve_plan(plan, index).mask).trainable == expected, sels
    assert card_figure(index.total_params) == "7.06B"


@pytest.mark.parametrize("name", sorted(EXACT))
def test_shipped_index_equals_a_fresh_build(name):
    """assets/indexes/ must describe exactly what transformers builds today
    (regenerate with scripts/build_indexes.py after a config or pin change)."""
    import gzip

    from freezelab.index import SHIPPED_DIR, ModelIndex, build_index, cache_key
    source = resolve(name)
    path = SHIPPED_DIR / f"{cache_key(source.config)}.json.gz"
    assert path.is_file(), f"no shipped index for {name} with this transformers release: run scripts/build_indexes.py"
    shipped = ModelIndex.from_dict(json.loads(gzip.decompress(path.read_bytes())))
    fresh = build_index(build(source, device="meta", dtype="bf16"), name, meta=True)
    assert shipped.params == fresh.params
    assert shipped.modules == fresh.modules
    assert (shipped.roots, shipped.layers, shipped.dead) == (fresh.roots, fresh.layers, fresh.dead)


def test_index_dtype_relabel(shipped_indexes):
    from freezelab.models import index_of
    fp32 = index_of(resolve("llava-1.5-7b"), dtype="fp32")
    assert {p.dtype for p in fp32.params} == {"float32"}
    assert {p.dtype for p in shipped_indexes["llava-1.5-7b"].params} == {"bfloat16"}
