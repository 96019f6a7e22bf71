"""Plan export / import: every target is checked by reading its text back and running the
mirrored selection logic of its framework, so `exact` can only be claimed when true."""

from __future__ import annotations

import copy
import json
import shlex

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezelab.anatomy import component_counts
from freezelab.cli import main
from freezelab.errors import PlanError, SelectorError
from freezelab.exports import TARGETS, ExportError, compress, export, export_all, import_plan
from freezelab.exports import llamafactory as lf
from freezelab.exports import llava as lv
from freezelab.exports import swift as sw
from freezelab.exports.base import difference
from freezelab.exports.python import minimal_rules
from freezelab.models import build
from freezelab.plans import MAX_PLAN_BYTES, PRESETS, Plan, Rule, apply, preset, resolve
from freezelab.sources import resolve as resolve_source

PRESET_NAMES = [n if n != "last-n" else "last-4" for n in PRESETS]
MODELS = ("tiny", "llava-1.5-7b", "llava-onevision-qwen2-0.5b")


@pytest.fixture(scope="module")
def indexes(tiny_index, shipped_indexes):
    return {"tiny": tiny_index, **shipped_indexes}


@pytest.fixture(scope="module")
def tiny_pair(tiny_source):
    """Two instances: one set by the exported snippet, one by freezelab's apply."""
    return build(tiny_source, device="cpu", dtype="fp32"), build(tiny_source, device="cpu", dtype="fp32")


def mask_of(index, plan):
    return resolve(plan, index).mask


def numel(index, mask):
    return sum(n for n, on in zip(index.numels, mask) if on)


def requires_grad_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def run_snippet(text, model):
    exec(compile(text, "<export>", "exec"), {"model": model})


# -- reading each target's text back into its framework's setting ------------------

def lf_setting(text):
    data = yaml.safe_load(text)
    split = (lambda v: tuple(x.strip() for x in str(v).split(",")))
    kw = {k: data[k] for k in ("finetuning_type", "freeze_vision_tower", "freeze_multi_modal_projector",
                               "freeze_language_model", "freeze_trainable_layers") if k in data}
    for key in ("freeze_trainable_modules", "freeze_extra_modules"):
        if key in data:
            kw[key] = split(data[key])
    return lf.Setting(**kw)


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
    args = flag_args(text)
    assert args.pop("tuner_type") == ["full"]
    truth = {"true": True, "false": False}
    return sw.Setting(freeze_llm=truth[args["freeze_llm"][0]], freeze_vit=truth[args["freeze_vit"][0]],
                      freeze_aligner=truth[args["freeze_aligner"][0]],
                      freeze_parameters=tuple(args.get("freeze_parameters", ())),
                      trainable_parameters=tuple(args.get("trainable_parameters", ())))


def llava_setting(text):
    args = flag_args(text)
    if "mm_tunable_parts" in args:
        return lv.TunableParts(tuple(args["mm_tunable_parts"][0].split(",")))
    truth = {"True": True, "False": False}
    source = lv.VIP if "ViP-LLaVA" in text.splitlines()[0] else lv.HAOTIAN
    return lv.LlavaFlags(truth[args["tune_mm_mlp_adapter"][0]], truth[args["freeze_backbone"][0]],
                         truth[args["freeze_mm_mlp_adapter"][0]], source)


def framework_mask(index, target, text):
    """What the framework would train, computed from the exported text alone."""
    if target == "llamafactory":
        return lf.trainable(index, lf_setting(text))
    if target == "swift":
        return sw.trainable(index, swift_setting(text))
    return llava_setting(text).trainable(lv.parts(index))


def check_honest(index, plan, exports):
    """exact <=> the framework trains the plan's set; otherwise the note states the difference."""
    want = mask_of(index, plan)
    for target in ("llamafactory", "swift", "llava"):
        ex = exports[target]
        if target == "llava" and not index.model_type.startswith(("llava", "vipllava")):
            assert not ex.exact and "build LLaVA models only" in ex.note and ex.differs == numel(index, want)
            continue
        diff = difference(want, framework_mask(index, target, ex.text))
        usable = not (target == "llamafactory" and index.model_type in lf.NO_MM_PLUGIN)
        assert ex.exact == (not diff and usable), (target, ex.note)
        assert ex.differs == diff.numel(index), target
        if not usable:
            assert "NOT USABLE" in ex.text and "no chat template or multimodal plugin" in ex.note
        elif not ex.exact:
            assert f"{ex.differs:,}" in ex.note and "NOT EXACT" in ex.text


# -- every target, every preset, three models ------------------------------------------

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_target_every_preset(indexes, model, name):
    index, plan = indexes[model], preset(name)
    exports = export_all(plan, index)
    assert list(exports) == list(TARGETS)
    check_honest(index, plan, exports)
    back = import_plan(exports["json"].text)
    assert mask_of(index, back) == mask_of(index, plan)
    doc = json.loads(exports["json"].text)
    assert doc["model"] == model and doc["trainable_params"] == numel(index, mask_of(index, plan))
    assert doc["total_params"] == index.total_params
    assert exports["json"].exact and exports["python"].exact


FAMILY_MODELS = ("qwen2-vl-2b-instruct", "qwen2.5-vl-3b-instruct", "qwen3-vl-2b-instruct", "internvl3-1b-hf",
                 "gemma-3-4b-it", "paligemma2-3b-pt-224", "smolvlm-256m-instruct", "smolvlm2-2.2b-instruct",
                 "mistral-small-3.1-24b-instruct-2503")


@pytest.mark.parametrize("model", FAMILY_MODELS)
@pytest.mark.parametrize("name", ["stage1", "stage2", "llm", "vision-projector", "last-4", "lm-head"])
def test_every_family_every_target(shipped_indexes, model, name):
    index, plan = shipped_indexes[model], preset(name)
    check_honest(index, plan, export_all(plan, index))


def test_family_registrations_decide_exactness(shipped_indexes):
    """LLaMA-Factory registers Qwen2.5-VL (merger as projector) but files Qwen3-VL's DeepStack mergers under
    the vision keys, and does not register Idefics3; ms-swift's qwen3_vl aligner includes them."""
    stage1 = preset("stage1")
    qwen25 = export(stage1, shipped_indexes["qwen2.5-vl-3b-instruct"], "llamafactory")
    data = yaml.safe_load(qwen25.text)
    assert qwen25.exact and (data["freeze_vision_tower"], data["freeze_multi_modal_projector"],
                             data["freeze_language_model"]) == (True, False, True)
    qwen3 = shipped_indexes["qwen3-vl-2b-instruct"]
    deepstack = sum(p.numel for p in qwen3.params if ".deepstack_merger_list." in p.name)
    lf3 = export(stage1, qwen3, "llamafactory")
    assert not lf3.exact and 0 < lf3.differs <= deepstack == 75_540_480
    projector_switch = lf.trainable(qwen3, lf.Setting("full", True, False, True))  # train the projector only
    assert difference(mask_of(qwen3, stage1), projector_switch).numel(qwen3) == deepstack
    sw3 = swift_setting(export(stage1, qwen3, "swift").text)
    assert (sw3.freeze_llm, sw3.freeze_vit, sw3.freeze_aligner) == (True, True, False)
    assert not sw3.freeze_parameters and not sw3.trainable_parameters
    smol = export(stage1, shipped_indexes["smolvlm-256m-instruct"], "llamafactory")
    assert "does not register idefics3" in smol.note
    # ms-swift's idefics3 arch names model.text_model only: --freeze_llm leaves lm_head trainable
    llm_only = swift_setting(export(preset("frozen"), shipped_indexes["smolvlm-256m-instruct"], "swift").text)
    assert llm_only.freeze_parameters == ("lm_head.",) and llm_only.freeze_llm
    smol2 = export(stage1, shipped_indexes["smolvlm2-2.2b-instruct"], "swift")
    assert "registers no model for SmolVLMForConditionalGeneration" in smol2.note


EXPECTED_LF_7B = {  # (finetuning_type, freeze_vision_tower, freeze_multi_modal_projector, freeze_language_model)
    "stage1": ("full", True, False, True),
    "stage2": ("full", True, False, False),
    "full": ("full", False, False, False),
    "llm": ("full", True, True, False),
    "vision-projector": ("full", False, False, True),
    "frozen": ("full", True, True, True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_LF_7B))
def test_llamafactory_keys_on_llava_7b(shipped_indexes, name):
    ex = export(preset(name), shipped_indexes["llava-1.5-7b"], "llamafactory")
    data = yaml.safe_load(ex.text)
    assert ex.exact
    assert (data["finetuning_type"], data["freeze_vision_tower"], data["freeze_multi_modal_projector"],
            data["freeze_language_model"]) == EXPECTED_LF_7B[name]


def test_llamafactory_freeze_mode_on_llava_7b(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    last4 = yaml.safe_load(export(preset("last-4"), index, "llamafactory").text)
    assert last4["finetuning_type"] == "freeze" and last4["freeze_trainable_layers"] == 4
    assert last4["freeze_trainable_modules"] == "all" and last4["freeze_vision_tower"] is True
    head = yaml.safe_load(export(preset("lm-head"), index, "llamafactory").text)
    assert head["freeze_trainable_layers"] == 0 and head["freeze_extra_modules"] == "lm_head"


def test_llamafactory_cannot_express_last4_plus_glob(shipped_indexes):
    """Closest: the last 4 layers; q_proj of the other 28 LLM layers and all 24 CLIP layers stay frozen."""
    index = shipped_indexes["llava-1.5-7b"]
    t, v = index.config["text_config"], index.config["vision_config"]
    h, hv = t["hidden_size"], v["hidden_size"]
    missing = (t["num_hidden_layers"] - 4) * h * h + v["num_hidden_layers"] * (hv * hv + hv)
    ex = export(preset("last-4").then("train", "*q_proj*"), index, "llamafactory")
    assert not ex.exact and ex.differs == missing == 494_952_448
    assert f"freezes {missing:,} parameters the plan trains" in ex.note
    assert yaml.safe_load(ex.text)["freeze_trainable_layers"] == 4


def test_swift_flags_on_llava_7b(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    expected = {"stage1": (True, True, False), "stage2": (False, True, False), "full": (False, False, False),
                "llm": (False, True, True), "vision-projector": (True, False, False), "frozen": (True, True, True)}
    for name, (llm, vit, aligner) in expected.items():
        s = swift_setting(export(preset(name), index, "swift").text)
        assert (s.freeze_llm, s.freeze_vit, s.freeze_aligner) == (llm, vit, aligner), name
        assert not s.freeze_parameters and not s.trainable_parameters, name
    last4 = swift_setting(export(preset("last-4"), index, "swift").text)
    assert last4.trainable_parameters == tuple(f"model.language_model.layers.{i}." for i in range(28, 32))
    assert (last4.freeze_llm, last4.freeze_vit, last4.freeze_aligner) == (True, True, True)


def test_llava_flags_on_llava_7b(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    haotian = {"stage1": (True, False, False), "stage2": (False, False, False), "llm": (False, False, True),
               "lm-head": (False, True, True), "frozen": (True, False, True)}
    for name, flags in haotian.items():
        ex = export(preset(name), index, "llava")
        s = llava_setting(ex.text)
        assert ex.exact and s == lv.LlavaFlags(*flags), name
    assert "--tune_mm_mlp_adapter True" in export(preset("stage1"), index, "llava").text
    nxt = {"full": ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model"),
           "vision-projector": ("mm_vision_tower", "mm_mlp_adapter")}
    for name, parts in nxt.items():  # LLaVA-1.5's script never trains the vision tower
        ex = export(preset(name), index, "llava")
        assert ex.exact and llava_setting(ex.text) == lv.TunableParts(parts), name


def test_llava_cannot_train_some_layers(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    t = index.config["text_config"]
    h, inter = t["hidden_size"], t["intermediate_size"]
    layer = 4 * h * h + 3 * h * inter + 2 * h  # Llama MHA block, no biases, two RMSNorms
    ex = export(preset("last-4"), index, "llava")
    assert not ex.exact and ex.differs == 4 * layer == 809_533_440


def test_onevision_image_newline(shipped_indexes):
    """image_newline is part of @projector; LLaVA-NeXT's mm_mlp_adapter leaves it frozen and
    LLaMA-Factory cannot reach it on an unregistered model type: both are off by hidden_size."""
    index = shipped_indexes["llava-onevision-qwen2-0.5b"]
    hidden = index.config["text_config"]["hidden_size"]
    for target in ("llava", "llamafactory"):
        ex = export(preset("stage1"), index, target)
        assert not ex.exact and ex.differs == hidden, target
        assert "model.image_newline" in ex.note
    assert "does not register llava_onevision" in export(preset("stage1"), index, "llamafactory").note
    assert llava_setting(export(preset("stage1"), index, "llava").text) == lv.TunableParts(("mm_mlp_adapter",))
    stage2 = export(preset("stage2"), index, "llava")
    assert stage2.exact and llava_setting(stage2.text) == lv.TunableParts(("mm_mlp_adapter", "mm_language_model"))
    s1 = swift_setting(export(preset("stage1"), index, "swift").text)
    assert (s1.freeze_llm, s1.freeze_vit, s1.freeze_aligner, s1.freeze_parameters) == (True, True, False, ())
    llm = swift_setting(export(preset("llm"), index, "swift").text)
    assert llm.freeze_parameters == ("model.image_newline",)


def test_llamafactory_has_no_onevision_plugin(shipped_indexes):
    """LLaMA-Factory @ ff6d4d1 registers no template and no multimodal plugin for LLaVA-OneVision
    (data/template.py, data/mm_plugin.py): keys that select exactly the plan's parameters are still
    not a usable export there, and the export says so."""
    index = shipped_indexes["llava-onevision-qwen2-0.5b"]
    full = export(preset("full"), index, "llamafactory")
    assert lf_setting(full.text) == lf.Setting("full", True, True, False)  # trains everything: the right set
    assert not full.exact and full.differs == 0
    assert "### NOT USABLE: LLaMA-Factory has no chat template or multimodal plugin for LLaVA-OneVision" in full.text
    assert "cannot train this model on images" in full.note
    assert export(preset("full"), shipped_indexes["llava-1.5-7b"], "llamafactory").exact


def test_llamafactory_closest_setting_searches_every_layer_count(shipped_indexes):
    """With no LLM layer trained, freeze_trainable_layers still matters on an unregistered model type:
    ".{idx}." also opens the vision layers with those indices. OneVision 0.5B vision tower + projector:
    the layers 0-23 open 24 of SigLIP's 26 layers (and all 24 Qwen2 layers), which beats training
    no layer at all (26 vision layers missing)."""
    index = shipped_indexes["llava-onevision-qwen2-0.5b"]
    t, v = index.config["text_config"], index.config["vision_config"]
    h, inter, kv = t["hidden_size"], t["intermediate_size"], t["num_key_value_heads"] * t["hidden_size"] // \
        t["num_attention_heads"]
    qwen_layer = 2 * (h * h + h) - h + 2 * (h * kv + kv) + 3 * h * inter + 2 * h  # q/k/v biases, o without
    hv, iv = v["hidden_size"], v["intermediate_size"]
    siglip_layer = 4 * (hv * hv + hv) + 2 * hv * iv + iv + hv + 4 * hv
    assert (t["num_hidden_layers"], v["num_hidden_layers"]) == (24, 26)
    ex = export(preset("vision-projector"), index, "llamafactory")
    setting = lf_setting(ex.text)
    assert abs(setting.freeze_trainable_layers) == 24
    assert ex.differs == 24 * qwen_layer + 2 * siglip_layer + h == 388_377_120  # + image_newline (hidden size)
    assert ex.differs < 26 * siglip_layer + h == 396_228_000  # what freeze_trainable_layers: 0 leaves out


# -- the mirrored framework logic, on real parameter names ----------------------------

def test_llamafactory_forbidden_modules_follow_names(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    comps = component_counts(index, [True] * len(index.params))
    only_llm = lf.trainable(index, lf.Setting("full"))  # LLaMA-Factory's defaults
    assert numel(index, only_llm) == comps["llm"].total
    only_projector = lf.trainable(index, lf.Setting("full", True, False, True))
    assert [index.params[i].component for i, on in enumerate(only_projector) if on] == ["projector"] * 4


def test_llamafactory_layer_sign_and_substring_quirks(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    t, v = index.config["text_config"], index.config["vision_config"]
    h, inter, hv, iv = t["hidden_size"], t["intermediate_size"], v["hidden_size"], v["intermediate_size"]
    llm_layer = 4 * h * h + 3 * h * inter + 2 * h
    clip_layer = 4 * (hv * hv + hv) + 2 * hv * iv + iv + hv + 4 * hv

    def layers(s):
        mask = lf.trainable(index, s)
        return sorted({(p.component, p.layer) for p, on in zip(index.params, mask) if on})

    assert layers(lf.Setting("freeze", freeze_trainable_layers=2)) == [("llm", 30), ("llm", 31)]
    assert layers(lf.Setting("freeze", freeze_trainable_layers=-2)) == [("llm", 0), ("llm", 1)]
    # ".0." and ".1." also match CLIP layers once the vision tower is not forbidden
    open_vision = lf.Setting("freeze", freeze_vision_tower=False, freeze_trainable_layers=-2)
    assert numel(index, lf.trainable(index, open_vision)) == 2 * llm_layer + 2 * clip_layer
    # an extra module matches as a substring: "norm" is also every decoder layer's two RMSNorms
    norms = lf.Setting("freeze", freeze_trainable_layers=0, freeze_extra_modules=("norm",))
    assert numel(index, lf.trainable(index, norms)) == (2 * t["num_hidden_layers"] + 1) * h


def test_llamafactory_refuses_what_it_refuses(shipped_indexes):
    with pytest.raises(lf.Refused):
        lf.trainable(shipped_indexes["llava-1.5-7b"], lf.Setting("freeze", freeze_trainable_modules=("attn",)))
    # tied lm_head is not in named_parameters(), so LLaMA-Factory does not know the module
    with pytest.raises(lf.Refused):
        lf.trainable(shipped_indexes["llava-onevision-qwen2-0.5b"],
                     lf.Setting("freeze", freeze_extra_modules=("lm_head",)))
    assert lf.trainable(shipped_indexes["llava-onevision-qwen2-0.5b"], lf.Setting("full", True, True, True)) == \
        [True] * len(shipped_indexes["llava-onevision-qwen2-0.5b"].params)  # not a registered composite model


def test_swift_prefixes_follow_names(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    comps = component_counts(index, [True] * len(index.params))
    assert numel(index, sw.trainable(index, sw.Setting())) == comps["llm"].total
    layer = sum(p.numel for p in index.params if p.component == "llm" and p.layer == 31)
    one = sw.Setting(freeze_llm=True, trainable_parameters=("model.language_model.layers.31.",))
    assert numel(index, sw.trainable(index, one)) == layer
    # startswith without the trailing dot: layers.1 also opens layers 10-19
    loose = sw.Setting(freeze_llm=True, trainable_parameters=("model.language_model.layers.1",))
    assert numel(index, sw.trainable(index, loose)) == 11 * layer
    assert sw.model_keys(shipped_indexes["vip-llava-7b"]) is None


def test_llava_parts_follow_names(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    of = lv.parts(index)
    part = {name: of[index.by_name[name]] for name in (
        "model.multi_modal_projector.linear_1.weight", "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
        "model.language_model.layers.0.mlp.up_proj.weight", "model.language_model.norm.weight", "lm_head.weight")}
    assert part == {"model.multi_modal_projector.linear_1.weight": "mm_projector",
                    "model.vision_tower.encoder.layers.0.mlp.fc1.weight": "vision_tower",
                    "model.language_model.layers.0.mlp.up_proj.weight": "llm_body",
                    "model.language_model.norm.weight": "llm_body", "lm_head.weight": "lm_head"}
    ov = shipped_indexes["llava-onevision-qwen2-0.5b"]
    assert lv.parts(ov)[ov.by_name["model.image_newline"]] == "image_newline"
    lm = lv.TunableParts(("mm_language_model",)).trainable(lv.parts(ov))
    assert lm[ov.by_name["model.image_newline"]]  # LLaVA-NeXT: everything not tower/projector/resampler


# -- the Python snippet ------------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
def test_snippet_reproduces_every_preset(tiny_index, tiny_pair, name):
    a, b = tiny_pair
    plan = preset(name)
    run_snippet(export(plan, tiny_index, "python").text, a)
    apply(plan, b, tiny_index)
    assert requires_grad_names(a) == requires_grad_names(b)


SELECTORS = ("@all", "@vision", "@projector", "@llm", "@lm_head", "@embeddings", "@llm.layers[-2:]",
             "@llm.layers[0]", "@vision.layers[1:]", "*q_proj*", "layers.1", "mlp", "norm", "linear_1",
             "re:layer_norm\\d", "model.language_model.layers.**.down_proj", "embeddings")
plans = st.builds(
    lambda base, rules: Plan(base, tuple(Rule(a, s) for a, s in rules)),
    st.sampled_from([None, "frozen", "trainable"]),
    st.lists(st.tuples(st.sampled_from(["train", "freeze"]), st.sampled_from(SELECTORS)), max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans)
def test_snippet_and_frameworks_on_random_plans(tiny_index, tiny_pair, plan):
    a, b = tiny_pair
    exports = export_all(plan, tiny_index)
    run_snippet(exports["python"].text, a)
    apply(plan, b, tiny_index)
    assert requires_grad_names(a) == requires_grad_names(b)
    check_honest(tiny_index, plan, exports)
    assert exports["swift"].exact  # prefix lists can always say it


@pytest.fixture(scope="module")
def meta_7b(shipped_indexes):
    return build(resolve_source("llava-1.5-7b"), device="meta", dtype="bf16"), shipped_indexes["llava-1.5-7b"]


@pytest.mark.parametrize("rules", [(("train", "@llm.layers[1]"),), (("train", "@projector"),),
                                   (("freeze", "@llm.layers[10:20]"),)])
def test_snippet_on_real_names(meta_7b, rules):
    """layers.1. must not reach layers.10-19 (checked on the 7B's real names, meta device)."""
    model, index = meta_7b
    plan = Plan(rules=tuple(Rule(*r) for r in rules))
    run_snippet(export(plan, index, "python").text, model)
    want = resolve(plan, index).trainable_names(index)
    assert requires_grad_names(model) == want


def test_snippet_uses_fewest_whole_module_prefixes(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    n = index.config["text_config"]["num_hidden_layers"]
    cases = {
        "stage1": (False, ["model.multi_modal_projector."]),
        "llm": (False, ["model.language_model.", "lm_head."]),
        "last-4": (False, [f"model.language_model.layers.{i}." for i in range(n - 4, n)]),
        "full": (True, []),
        "frozen": (False, []),
        "vision-projector": (False, ["model.vision_tower.", "model.multi_modal_projector."]),
    }
    for name, expected in cases.items():
        assert minimal_rules(index, mask_of(index, preset(name))) == expected, name
    text = export(preset("stage1"), index, "python").text
    assert f"transformers {index.transformers_version}" in text
    assert "assert trainable == 20_979_712" in text


def test_snippet_assert_catches_the_wrong_model(shipped_indexes, tiny_pair):
    text = export(preset("stage1"), shipped_indexes["llava-1.5-7b"], "python").text
    with pytest.raises(AssertionError, match="expected 20,979,712 trainable parameters, got 6,272"):
        run_snippet(text, tiny_pair[0])


def test_snippet_comments_cannot_be_broken_out_of(tiny_index, tiny_pair):
    with pytest.raises(SelectorError, match="control character"):  # a line break cannot enter a rule at all
        Rule("train", "re:linear_1|x\nimport os")
    named = copy.copy(tiny_index)  # a model name comes from a directory name: it can hold one
    named.name = "tiny\nimport os"
    plan = Plan(rules=(Rule("train", "re:linear_1|x"),))
    text = export(plan, named, "python").text
    assert "\nimport os" not in text and "tiny\\nimport os" in text
    run_snippet(text, tiny_pair[0])
    assert requires_grad_names(tiny_pair[0]) == resolve(plan, tiny_index).trainable_names(tiny_index)


def test_compress_respects_segments_and_ties(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    one = {i for i, p in enumerate(index.params) if p.component == "llm" and p.layer == 1}
    assert compress(index, one) == ["model.language_model.layers.1."]
    ov = shipped_indexes["llava-onevision-qwen2-0.5b"]
    tied = {i for i, on in enumerate(mask_of(ov, preset("lm-head"))) if on}
    assert compress(ov, tied) == ["model.language_model.embed_tokens."]  # lm_head.weight is only an alias
    q = {i for i, p in enumerate(index.params) if ".q_proj." in p.name and p.component == "llm"}
    everything_llm = {i for i, p in enumerate(index.params) if p.component == "llm"}
    assert compress(index, q, everything_llm) == ["model.language_model."]


# -- import ----------------------------------------------------------------------

def test_import_plan_formats(tiny_index):
    text = "# stage 1\nbase frozen\ntrain @projector\n"
    assert import_plan(text).rules == (Rule("train", "@projector"),)
    assert import_plan(text.encode()).effective_base == "frozen"
    assert import_plan("\ufeff" + text).rules == (Rule("train", "@projector"),)
    exported = export(preset("last-2"), tiny_index, "json").text
    assert import_plan(exported) == Plan("frozen", (Rule("train", "@llm.layers[-2:]"),), "last-2")


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("  \n# only a comment\n", "only comments"),
    (b"\xff\xfe train", "not UTF-8"),
    ("train @projector\x00", "binary"),
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "not valid JSON"),
    ('{"schema": "freezelab.plan/1", "rules": [], "trainable_params": -1}', "trainable_params"),
    ('{"schema": "freezelab.plan/1", "rules": [], "total_params": true}', "total_params"),
    ('{"schema": "freezelab.plan/1", "rules": [], "model": 3}', "'model' must be text"),
    ('{"schema": "freezelab.plan/1", "rules": [], "extra": 1}', "unknown plan field"),
    ("train", "line 1"),
    ("base sideways", "frozen or trainable"),
])
def test_import_plan_errors(text, message):
    with pytest.raises(PlanError, match=message):
        import_plan(text)


def test_import_plan_size_limit():
    with pytest.raises(PlanError, match=f"limit is {MAX_PLAN_BYTES:,}"):
        import_plan("# " + "x" * MAX_PLAN_BYTES)


def test_registry_and_unknown_target(tiny_index):
    assert list(TARGETS) == ["json", "python", "llamafactory", "swift", "llava", "deepspeed", "fsdp"]
    assert all(t.title and t.description and t.suffix.startswith(".") for t in TARGETS.values())
    with pytest.raises(ExportError, match="unknown export format 'megatron'"):
        export(Plan(), tiny_index, "megatron")
    with pytest.raises(SelectorError, match="layers.9"):
        export(Plan(rules=(Rule("train", "layers.9"),)), tiny_index, "python")


# -- CLI -----------------------------------------------------------------------

def test_cli_export_stdout_and_json(capsys, shipped_indexes):
    assert main(["export", "llava-1.5-7b", "--preset", "stage1", "--format", "llava"]) == 0
    out, err = capsys.readouterr()
    assert "--tune_mm_mlp_adapter True" in out and err.startswith("exact: ")
    assert main(["export", "llava-1.5-7b", "--preset", "last-4", "--train", "*q_proj*",
                 "--format", "llamafactory", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["exact"] is False and data["differs"] == 494_952_448 and "warning: not exact" in err


def test_cli_export_out_file_round_trip(capsys, tmp_path):
    path = tmp_path / "plan.json"
    assert main(["export", "tiny", "--preset", "last-2", "--train", "@projector", "--out", str(path)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["inspect", "tiny", "--plan", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == json.loads(path.read_text())["trainable_params"]
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary left behind


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}"], "is a directory"),
    (["--out", "{tmp}/missing/x.json"], "cannot write"),
    (["--train", "layers.9"], "matches no parameter"),
])
def test_cli_export_errors(capsys, tmp_path, args, message):
    argv = ["export", "tiny", "--preset", "stage1", *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert list(tmp_path.iterdir()) == []
