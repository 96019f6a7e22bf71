"""Parameter names as a given transformers release spells them.

freezelab's index holds the names of the installed transformers, but an export that names
parameters (the Python snippet, ms-swift's prefixes, LLaMA-Factory's module names) is read by
a trainer on its own transformers (swift.TRANSFORMERS, llamafactory.TRANSFORMERS: both older
than the installed one). The LLaVA-HF classes have had three spellings:

| transformers | vision tower (CLIP / SigLIP)          | LLM                      | lm_head                 | projector, image_newline |
|--------------|---------------------------------------|--------------------------|-------------------------|--------------------------|
| 5.6 and later| `model.vision_tower.encoder.…`        | `model.language_model.…` | `lm_head`               | `model.multi_modal_projector.…`, `model.image_newline` |
| 4.52 to 5.5  | `model.vision_tower.vision_model.…`   | the same                 | the same                | the same                 |
| before 4.52  | `vision_tower.vision_model.…`         | `language_model.model.…` | `language_model.lm_head`| `multi_modal_projector.…`, `image_newline` |

Sources: transformers 5.24 `conversion_mapping.py` (`"CLIPVisionModel": PrefixChange(prefix_to_remove=
"vision_model")`, which SigLIP / SigLIP2 vision models share, and the llava / llava_next renamings
`^language_model.lm_head -> lm_head`, `^language_model -> model.language_model`, `^vision_tower ->
model.vision_tower`, ...); the release boundaries as in freezelab's notes on naming (the same renames
as selectors.RENAMES). A prefix in the wrong spelling matches nothing, and the trainers only log that.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from packaging.version import InvalidVersion, Version

from freezelab.exports.base import ExportError
from freezelab.index import ModelIndex

MODEL_LEVEL_SINCE = Version("4.52")   # the LLaVA-HF classes' parts moved under `model.`
FLAT_TOWER_SINCE = Version("5.6")     # CLIP / SigLIP vision models lost their `vision_model.` level
NESTED_TOWERS = ("CLIPVisionModel", "SiglipVisionModel", "Siglip2VisionModel")  # conversion_mapping.py


class Spelling(StrEnum):
    """How a transformers release names the parameters of a LLaVA-HF model."""

    FLAT = "releases 5.6 and later"
    NESTED = "releases 4.52 to 5.5"
    LEGACY = "releases before 4.52"


def parse_version(text: str) -> Version:
    """A transformers release number such as `4.57` or `5.5.1`; one clear message otherwise."""
    try:
        version = Version(str(text).strip())
    except InvalidVersion:
        raise ExportError(f"{text!r} is not a transformers version (e.g. 4.57 or 5.5.1)") from None
    if version.major < 4:
        raise ExportError(f"transformers {text} predates the LLaVA classes (transformers 4.x)")
    return version


def spelling_of(version: str | Version) -> Spelling:
    v = version if isinstance(version, Version) else parse_version(version)
    release = Version(v.base_version)  # 5.6.0.dev0 is already a 5.6 build
    if release >= FLAT_TOWER_SINCE:
        return Spelling.FLAT
    return Spelling.NESTED if release >= MODEL_LEVEL_SINCE else Spelling.LEGACY


def spelling_of_index(index: ModelIndex) -> Spelling:
    """The spelling of the index's names; an index without a readable version was built by the
    installed transformers (requirements.txt pins a 5.6-or-later release)."""
    try:
        return spelling_of(index.transformers_version)
    except ExportError:
        return Spelling.FLAT


def _nested_tower(index: ModelIndex) -> str | None:
    """The vision tower's module path when it is a CLIP / SigLIP vision model (its names moved)."""
    roots = [r for r in index.roots.get("vision", []) if r in index.module_by_path]
    if len(roots) == 1 and index.module_by_path[roots[0]].type in NESTED_TOWERS:
        return roots[0]
    return None


def _rename(name: str, spelling: Spelling, tower: str | None) -> str:
    """One flat-spelling name (parameter or module path) in `spelling`."""
    if spelling == Spelling.FLAT:
        return name
    if tower and name.startswith(tower + "."):
        name = f"{tower}.vision_model.{name[len(tower) + 1:]}"
    if spelling == Spelling.NESTED:
        return name
    if name == "model.language_model" or name.startswith("model.language_model."):
        return "language_model.model" + name.removeprefix("model.language_model")
    if name == "lm_head" or name.startswith("lm_head."):
        return "language_model." + name
    return name.removeprefix("model.")


def respell(index: ModelIndex, version: str) -> ModelIndex:
    """The index with every name as transformers `version` spells it (same order, same counts), and
    `transformers_version` set to `version`. Only an index of a 5.6-or-later release can be respelled."""
    target = spelling_of(version)
    own = spelling_of_index(index)
    if target == own:
        return dataclasses.replace(index, transformers_version=str(version))
    if own != Spelling.FLAT:
        raise ExportError(f"names of transformers {index.transformers_version} cannot be respelled; "
                          f"freezelab needs transformers {FLAT_TOWER_SINCE} or later for that")
    tower = _nested_tower(index)

    def rn(name: str) -> str:
        return _rename(name, target, tower)

    params = [dataclasses.replace(p, name=rn(p.name), aliases=tuple(map(rn, p.aliases))) for p in index.params]
    modules = [dataclasses.replace(m, path=rn(m.path) if m.path else "", children=tuple(map(rn, m.children)))
               for m in index.modules]
    return dataclasses.replace(
        index, params=params, modules=modules, transformers_version=str(version),
        roots={k: [rn(r) for r in v] for k, v in index.roots.items()},
        layers={k: [rn(r) for r in v] for k, v in index.layers.items()},
        dead={rn(k): v for k, v in index.dead.items()})


def names_line(index: ModelIndex) -> str:
    """Which transformers spelling an export's names follow, for its header."""
    spelling = spelling_of_index(index)
    line = f"parameter names of transformers {index.transformers_version}, as {spelling.value} spell them"
    examples = [p.rsplit(".", 1)[0] + "." for p in (index.layers.get("vision", [])[:1] + index.layers["llm"][:1])]
    if spelling == Spelling.FLAT and _nested_tower(index):
        return (f"{line} (`{examples[0]}`); 4.52 to 5.5 add `vision_model.` after `model.vision_tower.`: "
                "export for the trainer's transformers if it is older")
    return f"{line} ({', '.join(f'`{e}`' for e in examples)})"
