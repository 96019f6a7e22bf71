"""Adapter exports, each read back from its text and run through its framework's mirrored selection code:
exact exactly when the framework gives the plan's adapters, full training and quantized weights. The PEFT
snippet runs on the tiny model with PEFT itself."""

from __future__ import annotations

import shlex

import pytest
import yaml

from freezelab.anatomy import summary
from freezelab.exports import export, export_all
from freezelab.exports import llamafactory as lf
from freezelab.exports import llamafactory_lora as lfl
from freezelab.exports import llava_lora as lvl
from freezelab.exports import swift_lora as swl
from freezelab.exports.adapted import compare, plan_outcome
from freezelab.exports.llava import HAOTIAN, NEXT, VIP
from freezelab.peft_targets import peft_name
from freezelab.plan_files import from_text
from freezelab.plans import resolve

PLANS = {
    "llava-1.5 recipe": "adapter r=128 alpha=256 dropout=0.05\ntrain @projector\nlora @llm",
    "qlora dora": "quant 4bit\nadapter r=16 alpha=32 dora=true\nlora @llm",
    "qlora fp4 8bit": "quant 8bit\nlora @llm",
    "vision and last llm layers": "lora @vision\nlora @llm.layers[-2:]",
    "q and v only": "lora re:language_model\\..*\\.(q|v)_proj\\.weight",
    "per-rule ranks": "lora @llm r=4\nlora @llm.layers[-1:] r=16 alpha=32",
    "adapters and biases": "lora @llm\ntrain *.bias",
}
MODELS = ("tiny", "llava-1.5-7b", "llava-onevision-qwen2-0.5b", "vip-llava-7b", "llava-v1.6-mistral-7b")


@pytest.fixture(scope="module")
def indexes(tiny_index, shipped_indexes):
    return {"tiny": tiny_index, **shipped_indexes}


def _split(value):
    return tuple(x.strip() for x in str(value).split(","))


def lf_setting(text):
    d = yaml.safe_load(text)
    assert d["finetuning_type"] == "lora"
    return lfl.LoraSetting(d["lora_rank"], d["lora_alpha"], d["lora_dropout"], _split(d["lora_target"]),
                           d.get("use_dora", False), _split(d["additional_target"]) if "additional_target" in d else (),
                           d["freeze_vision_tower"], d["freeze_multi_modal_projector"], d["freeze_language_model"],
                           d.get("quantization_bit"), d.get("quantization_type", "nf4"),
                           d.get("double_quantization", True))


def flag_args(text):
    lines = [ln.removesuffix("\\").strip() for ln in text.splitlines() if ln and not ln.startswith("#")]
    args, key = {}, None
    for tok in shlex.split(" ".join(lines)):
        if tok.startswith("--"):
            key = tok[2:]
            args[key] = []
        else:
            args[key].append(tok)
    return args


def swift_setting(text):
    a = flag_args(text)
    assert a["tuner_type"] == ["lora"]
    truth = {"true": True, "false": False}
    return swl.LoraSetting(int(a["lora_rank"][0]), float(a["lora_alpha"][0]), float(a["lora_dropout"][0]),
                           truth[a.get("use_dora", ["false"])[0]], tuple(a.get("target_modules", ["all-linear"])),
                           a["target_regex"][0] if "target_regex" in a else None, truth[a["freeze_llm"][0]],
                           truth[a["freeze_vit"][0]], truth[a["freeze_aligner"][0]], tuple(a.get("modules_to_save", ())),
                           int(a["quant_bits"][0]) if "quant_bits" in a else None,
                           a.get("bnb_4bit_quant_type", ["nf4"])[0], truth[a.get("bnb_4bit_use_double_quant", ["true"])[0]])


def llava_flags(text):
    a = flag_args(text)
    assert a["lora_enable"] == ["True"]
    first = text.splitlines()[0]
    source = VIP if "ViP-LLaVA" in first else NEXT if "LLaVA-NeXT" in first else HAOTIAN
    bits = int(a["bits"][0]) if "bits" in a else 16
    return lvl.LoraFlags(int(a["lora_r"][0]), float(a["lora_alpha"][0]), float(a["lora_dropout"][0]),
                         a.get("freeze_mm_mlp_adapter", ["False"])[0] == "True", bits,
                         a.get("quant_type", ["nf4"])[0], a.get("double_quant", ["True"])[0] == "True", source)


def framework_outcome(index, target, text):
    if target == "llamafactory":
        return lfl.outcome(index, lf_setting(text))
    if target == "swift":
        return swl.outcome(index, swift_setting(text))
    return lvl.outcome(index, llava_flags(text))


@pytest.mark.parametrize("model", MODELS)
def test_adapter_exports_are_honest(indexes, model):
    index = indexes[model]
    for name, text in PLANS.items():
        res = resolve(from_text(text), index)
        want = plan_outcome(res.mask, res.adapters)
        exports = export_all(res.plan, index)
        for target in ("llamafactory", "swift", "llava"):
            ex = exports[target]
            phrases, n = compare(index, want, framework_outcome(index, target, ex.text))
            usable = not (target == "llamafactory" and index.model_type in lf.NO_MM_PLUGIN)
            assert ex.exact == (not phrases and usable), (model, name, target, ex.note, phrases)
            assert ex.differs == n, (model, name, target)
            if not usable:
                assert "NOT USABLE" in ex.text
            else:
                assert ("NOT EXACT" in ex.text) != ex.exact


def test_llava15_recipe_is_exact_everywhere(indexes):
    exports = export_all(from_text(PLANS["llava-1.5 recipe"]), indexes["llava-1.5-7b"])
    assert all(e.exact for e in exports.values())
    assert "--lora_enable True --lora_r 128 --lora_alpha 256 --lora_dropout 0.05 \\\n--mm_projector_lr 2e-5" \
        in exports["llava"].text
    lf = yaml.safe_load(exports["llamafactory"].text)
    assert (lf["lora_rank"], lf["lora_alpha"], lf["lora_target"], lf["additional_target"]) == \
        (128, 256, "all", "model.multi_modal_projector")
    assert "--target_modules all-linear" in exports["swift"].text
    assert "--modules_to_save model.multi_modal_projector" in exports["swift"].text


def test_frameworks_say_what_they_cannot_express(indexes):
    index = indexes["llava-1.5-7b"]
    qlora = export_all(from_text(PLANS["qlora dora"]), index)
    assert qlora["swift"].exact
    assert not qlora["llamafactory"].exact and "also quantizes 146 weights the plan keeps" in qlora["llamafactory"].note
    assert not qlora["llava"].exact and "cannot use DoRA" in qlora["llava"].note
    assert "also quantizes 1 weight the plan keeps" in qlora["llava"].note  # lm_head: skip list replaces defaults
    ranks = export(from_text(PLANS["per-rule ranks"]), index, "llamafactory")
    assert not ranks.exact and "uses r=4 alpha=8 on 7 layers where the plan has r=16 alpha=32" in ranks.note


def test_peft_snippet_builds_the_plan_on_tiny(tiny_index, tiny_model):
    pytest.importorskip("peft")
    for text in (PLANS["llava-1.5 recipe"], PLANS["per-rule ranks"], PLANS["adapters and biases"],
                 "adapter dora=true\nlora @vision.layers[0]\nlora @lm_head"):
        from freezelab.models import build
        from freezelab.sources import resolve as resolve_source

        model = build(resolve_source("tiny"), device="cpu", dtype="fp32")
        res = resolve(from_text(text), tiny_index)
        ex = export(res.plan, tiny_index, "python")
        scope = {"model": model}
        exec(compile(ex.text, "<export>", "exec"), scope)  # its own assert checks PEFT's counts
        adapted, mask = res.adapted(tiny_index)
        paths = frozenset(a.path for a in res.adapters.layers)
        named = dict(scope["model"].get_base_model().named_parameters())
        assert {peft_name(p.name, paths) for p, on in zip(adapted.params, mask) if on} == \
            {n for n, p in named.items() if p.requires_grad}
        s = summary(adapted, mask)
        assert scope["model"].get_nb_trainable_parameters() == (s["trainable_params"], s["total_params"])


def test_adapter_exports_in_an_older_transformers_spelling(indexes):
    """Names for the trainer's transformers: the adapted layers follow the respelled index."""
    from freezelab.exports.naming import respell

    index = indexes["llava-1.5-7b"]
    named = respell(index, "4.57")
    res = resolve(from_text(PLANS["vision and last llm layers"]), index)
    want = plan_outcome(res.mask, res.adapters)
    exports = export_all(res.plan, index, transformers="4.57")
    for target in ("llamafactory", "swift"):
        ex = exports[target]
        phrases, _ = compare(named, plan_outcome(res.mask, _respelled(res, named)), framework_outcome(
            named, target, ex.text))
        assert ex.exact == (not phrases)
    assert "model.vision_tower.vision_model" in exports["swift"].text and exports["swift"].exact
    assert "model.vision_tower.vision_model" in exports["python"].text
    assert want.ranks[0][0].startswith("model.vision_tower.encoder.")


def _respelled(res, named):
    from freezelab.exports import _respelled as respelled

    return respelled(res.adapters, named)
