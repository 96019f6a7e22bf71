"""Exports for a trainer on another transformers release: the names that a name-based export writes
follow the trainer's spelling (freezelab.exports.naming), checked by running each framework's mirrored
selection on the respelled names, and the Python snippet on a model that has them."""

from __future__ import annotations

import pytest
import torch

from freezelab.cli import main
from freezelab.exports import ExportError, export
from freezelab.exports import llamafactory as lf
from freezelab.exports import swift as sw
from freezelab.exports.naming import Spelling, respell, spelling_of
from freezelab.plans import Plan, Rule, preset, resolve
from tests.test_exports import PRESET_NAMES, lf_setting, swift_setting

VISION_PLAN = Plan(rules=(Rule("train", "@vision.layers[-4:]"), Rule("train", "@projector")))


def numel(index, mask):
    return sum(n for n, on in zip(index.numels, mask) if on)


@pytest.mark.parametrize("version, spelling", [("5.24.0", Spelling.FLAT), ("5.6", Spelling.FLAT),
                                               ("5.6.0.dev0", Spelling.FLAT), ("5.5.4", Spelling.NESTED),
                                               ("4.57", Spelling.NESTED), ("4.52.0", Spelling.NESTED),
                                               ("4.51.3", Spelling.LEGACY), ("4.45", Spelling.LEGACY)])
def test_spelling_boundaries(version, spelling):
    assert spelling_of(version) == spelling


def test_respell_names_every_part(shipped_indexes):
    index = shipped_indexes["llava-v1.6-mistral-7b"]  # CLIP tower, image_newline, untied lm_head
    names = {
        "5.24.0": ["model.vision_tower.encoder.layers.23.mlp.fc1.weight", "model.vision_tower.post_layernorm.bias",
                   "model.image_newline", "model.multi_modal_projector.linear_1.weight",
                   "model.language_model.layers.31.mlp.up_proj.weight", "lm_head.weight"],
        "4.57": ["model.vision_tower.vision_model.encoder.layers.23.mlp.fc1.weight",
                 "model.vision_tower.vision_model.post_layernorm.bias", "model.image_newline",
                 "model.multi_modal_projector.linear_1.weight", "model.language_model.layers.31.mlp.up_proj.weight",
                 "lm_head.weight"],
        "4.45": ["vision_tower.vision_model.encoder.layers.23.mlp.fc1.weight",
                 "vision_tower.vision_model.post_layernorm.bias", "image_newline",
                 "multi_modal_projector.linear_1.weight", "language_model.model.layers.31.mlp.up_proj.weight",
                 "language_model.lm_head.weight"],
    }
    picked = [index.by_name[n] for n in names["5.24.0"]]
    for version, expected in names.items():
        other = respell(index, version)
        assert [other.params[i].name for i in picked] == expected, version
        assert other.numels == index.numels and other.transformers_version == version
    legacy = respell(index, "4.45")
    assert legacy.layers["llm"][0] == "language_model.model.layers.0"
    assert legacy.layers["vision"][0] == "vision_tower.vision_model.encoder.layers.0"
    tied = respell(shipped_indexes["llava-onevision-qwen2-0.5b"], "4.45")  # SigLIP tower, tied lm_head
    assert [p.aliases for p in tied.params if p.aliases] == [("language_model.lm_head.weight",)]
    assert tied.params[tied.by_name["vision_tower.vision_model.post_layernorm.bias"]].component == "vision"


def test_swift_prefixes_for_an_older_trainer(shipped_indexes):
    """The default export's vision-layer prefixes match nothing under transformers 4.52-5.5, which
    ms-swift (transformers<5.17) only logs; --target-transformers 4.57 writes that release's names."""
    index = shipped_indexes["llava-1.5-7b"]
    mask = resolve(VISION_PLAN, index).mask
    older = respell(index, "4.57")
    default = export(VISION_PLAN, index, "swift")
    assert "model.vision_tower.encoder.layers.20." in default.text
    missed = sw.trainable(older, swift_setting(default.text))
    assert numel(older, missed) == numel(index, mask) - 4 * 12_596_224  # the four CLIP layers silently frozen
    ex = export(VISION_PLAN, index, "swift", transformers="4.57")
    assert ex.exact and "model.vision_tower.vision_model.encoder.layers.20." in ex.text
    assert sw.trainable(older, swift_setting(ex.text)) == mask
    assert "# parameter names of transformers 4.57, as releases 4.52 to 5.5 spell them" in ex.text
    assert "4.52 to 5.5 add `vision_model.` after `model.vision_tower.`" in default.text
    legacy = export(preset("stage1"), index, "swift", transformers="4.45")  # ms-swift's keys without `model.`
    assert sw.trainable(respell(index, "4.45"), swift_setting(legacy.text)) == resolve(preset("stage1"), index).mask
    assert sw.model_keys(respell(index, "4.45")).aligner == ("multi_modal_projector",)


class NamedModel:
    """Stands in for a transformers model of another release: only named parameters, as the snippet uses."""

    def __init__(self, index):
        self.params = {p.name: torch.nn.Parameter(torch.zeros(p.numel)) for p in index.params}

    def named_parameters(self):
        return iter(self.params.items())

    def parameters(self):
        return iter(self.params.values())

    def requires_grad_(self, on):
        for p in self.params.values():
            p.requires_grad_(on)
        return self


@pytest.mark.parametrize("version", ["4.57", "4.45"])
def test_python_snippet_for_an_older_trainer(tiny_index, version):
    older = respell(tiny_index, version)
    want = {older.params[i].name for i, on in enumerate(resolve(VISION_PLAN, tiny_index).mask) if on}
    model = NamedModel(older)
    exec(export(VISION_PLAN, tiny_index, "python", transformers=version).text, {"model": model})
    assert {n for n, p in model.params.items() if p.requires_grad} == want
    with pytest.raises(AssertionError, match="trainable parameters"):  # the installed names miss the tower
        exec(export(VISION_PLAN, tiny_index, "python").text, {"model": NamedModel(older)})


@pytest.mark.parametrize("model", ["llava-1.5-7b", "llava-v1.6-mistral-7b", "llava-onevision-qwen2-0.5b"])
def test_llamafactory_keys_hold_in_both_spellings(shipped_indexes, model):
    """What the LLaMA-Factory header claims: its module-name keys select the same parameters whether
    transformers spells the vision tower model.vision_tower.vision_model.* (4.55-5.5) or not (5.7-5.8)."""
    index = shipped_indexes[model]
    nested = respell(index, "5.5")
    for name in PRESET_NAMES:
        mask = resolve(preset(name), index).mask
        setting, diff = lf.best(index, mask)
        assert lf.best(nested, mask) == (setting, diff), name
        assert lf.trainable(nested, setting) == lf.trainable(index, setting), name
    text = export(preset("last-4"), index, "llamafactory", transformers="4.58").text
    assert "which transformers releases from 4.52 on spell alike (names here: transformers 4.58)" in \
        text.replace("\n### ", " ")
    assert lf_setting(text) == lf.best(index, resolve(preset("last-4"), index).mask)[0]


def test_target_version_errors(shipped_indexes):
    index = shipped_indexes["llava-1.5-7b"]
    with pytest.raises(ExportError, match="'banana' is not a transformers version"):
        export(preset("stage1"), index, "swift", transformers="banana")
    with pytest.raises(ExportError, match="predates the LLaVA classes"):
        export(preset("stage1"), index, "python", transformers="3.9")
    with pytest.raises(ExportError, match="LLaMA-Factory .* needs transformers>=4.55.0"):
        export(preset("stage1"), index, "llamafactory", transformers="4.45")
    assert export(preset("stage1"), index, "llava", transformers="4.45").exact  # LLaVA's own classes: no names
    with pytest.raises(ExportError, match="not a transformers version"):
        export(preset("stage1"), index, "llava", transformers="4.x")


def test_cli_target_transformers(capsys):
    argv = ["export", "llava-1.5-7b", "--train", "@vision.layers[-1]", "--format", "swift"]
    assert main([*argv, "--target-transformers", "4.57"]) == 0
    out, err = capsys.readouterr()
    assert "--trainable_parameters model.vision_tower.vision_model.encoder.layers.23." in out
    assert err.startswith("exact: ")
    assert main([*argv, "--target-transformers", "five"]) == 2
    assert "error: 'five' is not a transformers version" in capsys.readouterr().err
