"""ModelIndex: a torch-free description of a model's parameters and modules.

Built once by walking the module objects of a real (or meta-device) model;
plans, counts, the tree, the analytic estimator and the charts all work on
this index, so a preview never touches a model and a 72B architecture costs
a few hundred kilobytes. Indexes of architecture-only models are cached on
disk (keyed by config, transformers version and index schema), so a repeated
`inspect` needs neither torch nor transformers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezelab.components import COMPONENTS, ancestors, classify  # noqa: F401  (COMPONENTS: also read from here)
from freezelab.families import FeatureRead, family

if TYPE_CHECKING:
    import torch

SCHEMA = 5


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    numel: int
    dtype: str
    component: str                 # a freezelab.components.Component value: "vision" | "projector" | "llm"
    part: str                      # a freezelab.components.Part value, e.g. "llm.layers", "lm_head"
    layer: int | None = None       # decoder / encoder layer index in its tower
    aliases: tuple[str, ...] = ()  # other names of the same tensor (tied weights)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class ModuleInfo:
    path: str                      # dotted path, "" for the root
    type: str                      # class name
    depth: int
    children: tuple[str, ...]      # child paths
    own: tuple[int, ...]           # indices of parameters registered directly on it
    params: tuple[int, ...]        # indices of all parameters in its subtree (tied: once)
    component: str                 # one of COMPONENTS, or "model" when it spans several
    layer: int | None = None


@dataclass
class ModelIndex:
    name: str
    model_class: str
    model_type: str
    config: dict[str, Any]
    params: list[ParamInfo]
    modules: list[ModuleInfo]
    roots: dict[str, list[str]]      # component -> module paths (vision tower, projector, LM, lm_head, ...)
    layers: dict[str, list[str]]     # "vision" / "llm" -> layer module paths in order
    dead: dict[str, str] = field(default_factory=dict)  # param name -> why it never gets a gradient
    transformers_version: str = ""
    meta: bool = True                # built on the meta device (architecture only)
    recognised: dict[str, str] = field(default_factory=dict)  # component -> what the classifier found, in words
    buffers: list[tuple[str, int, int]] = field(default_factory=list)  # (name, elements, bytes per element)
    # the image processor's settings (from the shipped config or the checkpoint's preprocessor_config.json):
    # set per source by freezelab.models.index_of, not part of the architecture or its cache key
    processor: dict[str, Any] = field(default_factory=dict)

    # -- lookups -------------------------------------------------------------
    @cached_property
    def by_name(self) -> dict[str, int]:
        return {n: i for i, p in enumerate(self.params) for n in p.names}

    @cached_property
    def module_by_path(self) -> dict[str, ModuleInfo]:
        return {m.path: m for m in self.modules}

    @cached_property
    def numels(self) -> list[int]:
        return [p.numel for p in self.params]

    @property
    def total_params(self) -> int:
        return sum(self.numels)

    def component_params(self, component: str) -> list[int]:
        return [i for i, p in enumerate(self.params) if p.component == component]

    @property
    def tied(self) -> list[ParamInfo]:
        return [p for p in self.params if p.aliases]

    def with_dtype(self, dtype: str) -> ModelIndex:
        """The same architecture-only index with every parameter in `dtype` (a torch dtype name)."""
        if all(p.dtype == dtype for p in self.params):
            return self
        data = self.to_dict()
        for p in data["params"]:
            p["dtype"] = dtype
        return ModelIndex.from_dict(data)

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items()}
        data["schema"] = SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIndex:
        data = dict(data)
        data.pop("schema", None)
        data["params"] = [
            ParamInfo(**{**p, "shape": tuple(p["shape"]), "aliases": tuple(p["aliases"])}) for p in data["params"]
        ]
        data["buffers"] = [tuple(b) for b in data.get("buffers", [])]
        data["modules"] = [
            ModuleInfo(**{**m, "children": tuple(m["children"]), "own": tuple(m["own"]), "params": tuple(m["params"])})
            for m in data["modules"]
        ]
        return cls(**data)


# -- building from a model ----------------------------------------------------

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _hidden_state_index(feature_layer: Any, num_layers: int) -> int:
    """Highest hidden_states index the projector reads (hidden_states has num_layers + 1 entries)."""
    layers = feature_layer if isinstance(feature_layer, (list, tuple)) else [feature_layer]
    return max(int(i) % (num_layers + 1) for i in layers)


def _reads_hidden_state(config: Any) -> bool:
    """Whether the projector reads hidden_states[vision_feature_layer] (not the tower's final output)."""
    read = family(config.model_type, config.to_dict()).feature_read
    if read is FeatureRead.LAST_IF_MINUS_ONE:
        return getattr(config, "vision_feature_layer", -1) != -1
    return read is FeatureRead.HIDDEN_STATE


def _norm_like(params: list[ParamInfo], module_of: dict[str, str], name: str) -> bool:
    """A parameter of a module whose parameters are all 1-D (a LayerNorm / RMSNorm)."""
    module = module_of[name]
    return all(len(p.shape) == 1 for p in params if module_of[p.name] == module)


def _dead_params(params: list[ParamInfo], vision_layers: list[str], config: Any) -> dict[str, str]:
    """Vision parameters no gradient can reach. When the projector reads hidden_states[k] (LLaVA,
    Mistral 3): the layers after k, and everything the tower registers after its layer stack
    (post_layernorm, pooling head). When it reads the tower's output (Qwen, Gemma 3, PaliGemma,
    Idefics3, InternVL at -1): only what follows the final norm (a pooling head)."""
    n = len(vision_layers)
    if n == 0:
        return {}
    vision = [p for p in params if p.component == "vision"]
    last_layer_pos = max((i for i, p in enumerate(vision) if p.layer is not None), default=-1)
    after = [p for i, p in enumerate(vision) if p.layer is None and i > last_layer_pos]
    if not _reads_hidden_state(config):
        module_of = {p.name: p.name.rpartition(".")[0] for p in after}
        return {p.name: "registered after the vision tower's final norm (a pooling head): the model reads "
                "the tower's last hidden state, not its pooled output"
                for p in after if not _norm_like(after, module_of, p.name)}
    feature_layer = getattr(config, "vision_feature_layer", getattr(config, "vision_feature_layers", -1))
    used = _hidden_state_index(feature_layer, n)
    dead = {p.name: (f"vision layer {p.layer} only feeds hidden states after the one the projector "
                     f"reads (vision_feature_layer={feature_layer})")
            for p in vision if p.layer is not None and p.layer >= used}
    fam = family(config.model_type, config.to_dict())
    who = "LLaVA" if fam.title.startswith(("LLaVA", "VipLLaVA")) else fam.title
    dead.update({p.name: f"registered after the vision layers (post-norm / pooling head): {who} reads hidden "
                 "states, not the pooled output" for p in after})
    return dead


def build_index(model: torch.nn.Module, name: str, *, meta: bool) -> ModelIndex:
    """Walk a vision-language model's module objects and describe every parameter and module."""
    import transformers

    config = model.config
    found = classify(model)
    layers = {str(tower): paths for tower, paths in found.layers.items()}
    layer_of = {path: (tower, i) for tower, paths in layers.items() for i, path in enumerate(paths)}

    # named_parameters() lists each tensor once; remove_duplicate=False reveals tied aliases.
    unique = list(model.named_parameters())
    ids = {id(p): i for i, (_, p) in enumerate(unique)}
    aliases: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        i = ids[id(p)]
        if n != unique[i][0]:
            aliases.setdefault(i, []).append(n)

    params = []
    for i, (pname, p) in enumerate(unique):
        place = found.params[pname]
        params.append(ParamInfo(pname, tuple(p.shape), p.numel(), _dtype_name(p.dtype), place.component.value,
                                place.part.value, place.layer, tuple(aliases.get(i, ()))))

    modules = _module_infos(model, ids, params, layer_of)
    roots = {str(k): v for k, v in found.roots().items()}
    dead = _dead_params(params, layers["vision"], config)
    return ModelIndex(name=name, model_class=type(model).__name__, model_type=config.model_type,
                      config=config.to_dict(), params=params, modules=modules, roots=roots, layers=layers,
                      dead=dead, transformers_version=transformers.__version__, meta=meta,
                      recognised={str(k): v for k, v in found.recognised().items()},
                      buffers=[(n, b.numel(), b.element_size()) for n, b in model.named_buffers()])


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _module_infos(model: torch.nn.Module, ids: dict[int, int], params: list[ParamInfo],
                  layer_of: dict[str, tuple[str, int]]) -> list[ModuleInfo]:
    entries = list(model.named_modules(remove_duplicate=False))
    own = {path: [ids[id(p)] for _, p in module.named_parameters(recurse=False, remove_duplicate=False)]
           for path, module in entries}
    subtree: dict[str, set[int]] = {path: set() for path, _ in entries}
    for path, idx in own.items():
        for anc in [*ancestors(path), ""]:
            subtree[anc].update(idx)
    infos = []
    component_of: dict[str, str] = {}
    for path, module in entries:  # pre-order: a parent comes before its children
        comps = {params[i].component for i in subtree[path]}
        if not comps and path:  # parameter-free module (activation, dropout): its parent's
            component = component_of[_parent(path)]
        else:
            component = comps.pop() if len(comps) == 1 else "model"
        component_of[path] = component
        children = tuple(f"{path}.{c}" if path else c for c, _ in module.named_children())
        infos.append(ModuleInfo(path=path, type=type(module).__name__, depth=path.count(".") + 1 if path else 0,
                                children=children, own=tuple(own[path]), params=tuple(sorted(subtree[path])),
                                component=component, layer=layer_of.get(path, (None, None))[1]))
    return infos


# -- cache -------------------------------------------------------------------
# Indexes of architecture-only models are cached by (config, transformers minor
# version, schema): module names change between transformers minor releases, not
# within them. assets/indexes/ ships the indexes of the known architectures for
# the transformers release requirements.txt names (scripts/build_indexes.py
# writes them; a test checks they equal a fresh build), so a first `inspect` of a
# known model needs neither torch nor transformers.

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "indexes"
# the on-disk cache: onevision-72b's index is 0.6 MB, that of a config near the size bounds several MB
CACHE_MAX_BYTES = 64 * 2**20


def cache_dir() -> Path:
    root = os.environ.get("FREEZELAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "freezelab")
    return Path(root) / "index"


def transformers_minor() -> str:
    return ".".join(metadata.version("transformers").split(".")[:2])


def cache_key(config: dict[str, Any]) -> str:
    clean = {k: v for k, v in config.items() if not k.startswith("_freezelab")}
    blob = json.dumps({"config": clean, "transformers": transformers_minor(), "schema": SCHEMA},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load_cached(key: str) -> ModelIndex | None:
    for path, opener in ((cache_dir() / f"{key}.json", open), (SHIPPED_DIR / f"{key}.json.gz", gzip.open)):
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                return ModelIndex.from_dict(json.load(f))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # missing or stale: try the next place, else rebuild
    return None


def store_cached(key: str, index: ModelIndex) -> None:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
            json.dump(index.to_dict(), f)
        os.replace(f.name, directory / f"{key}.json")
        _trim(directory, keep=directory / f"{key}.json")
    except OSError:
        pass  # a read-only home only costs speed


def _trim(directory: Path, keep: Path) -> None:
    """Delete the oldest files of the cache directory until it holds at most CACHE_MAX_BYTES; the index just
    written stays, so every config a client sends cannot grow the disk without limit."""
    files = []
    for path in directory.iterdir():
        try:
            stat = path.stat()
        except OSError:
            continue  # removed meanwhile by another process
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= CACHE_MAX_BYTES:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size
