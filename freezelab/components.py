"""Where a vision-language model's components are, found by walking its module objects.

Not by name: module names changed across transformers releases
(`language_model.model.layers` became `model.language_model.layers`) and differ
between families (`vision_tower` / `visual` / `vision_model`, `language_model` /
`text_model`, `encoder.layers` / `encoder.layer` / `blocks` / `transformer.layers`),
so every part is found from the objects and configs themselves:

* the vision tower and the language model are the outermost sub-models whose
  config *is* the model's `vision_config` / text config (`get_text_config()`);
* their layer stacks are the `ModuleList`s with as many blocks as the config
  has layers;
* the input embeddings and the output head are what `get_input_embeddings()`
  and `get_output_embeddings()` return;
* the projector is every parameter outside both towers, the embeddings and the
  head (LLaVA's `multi_modal_projector`, LLaVA-NeXT's bare `image_newline`,
  Idefics3's `connector`), plus the modules a vision tower registers after its
  layer stack that map into the language model's width (Qwen's `visual.merger`
  and Qwen3-VL's `visual.deepstack_merger_list`, which live inside the tower).

`classify(model)` returns a `ModelComponents`: the component roots and, for
every parameter name (tied aliases included), its `Place`. The model index
(`freezelab.index`) and the simulated estimator (`freezelab.memory.simulate`)
both use it. Importing this module needs no torch; `classify` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from freezelab.errors import SourceError

if TYPE_CHECKING:
    import torch


class Component(StrEnum):
    """The three parts of a vision-language model every parameter belongs to (the head belongs to the LLM)."""

    VISION = "vision"
    PROJECTOR = "projector"
    LLM = "llm"


COMPONENTS: tuple[Component, ...] = tuple(Component)


class Part(StrEnum):
    """A finer grouping of the parameters inside a component."""

    VISION_LAYERS = "vision.layers"
    VISION_OTHER = "vision.other"       # patch / position embeddings, pre- and post-norms
    PROJECTOR = "projector"
    EMBEDDINGS = "llm.embeddings"       # get_input_embeddings()
    LLM_LAYERS = "llm.layers"
    LLM_OTHER = "llm.other"             # the final norm
    LM_HEAD = "lm_head"                 # get_output_embeddings()
    ADAPTER = "adapter"                 # a LoRA / DoRA tensor PEFT adds (only in an adapted index)


class ComponentError(SourceError):
    """The model's vision tower, language model or their layer stacks cannot be found among its modules."""


@dataclass(frozen=True)
class Place:
    """Where one parameter belongs."""

    component: Component
    part: Part
    layer: int | None = None            # index in its tower's layer stack


@dataclass(frozen=True)
class ModelComponents:
    """Module paths of a model's components and the place of each of its parameters."""

    vision: str                          # the vision tower
    language: str                        # the language model (without the head)
    embeddings: str                      # get_input_embeddings()
    lm_head: str | None                  # get_output_embeddings(), None when the model has none
    layers: dict[Component, list[str]]   # VISION / LLM -> its layer modules, in order
    projector_modules: tuple[str, ...]   # outermost modules holding only projector parameters
    projector_params: tuple[str, ...]    # projector parameters registered on other modules
    params: dict[str, Place] = field(default_factory=dict)  # every parameter name, tied aliases too
    inner_projector: tuple[str, ...] = ()  # projector modules inside the vision tower (Qwen's merger)
    types: dict[str, str] = field(default_factory=dict)     # class name of each root found

    def recognised(self) -> dict[str, str]:
        """What was found where, in words (shown by `inspect` and the dashboard)."""
        def at(path: str | None) -> str:
            return f"{path} ({self.types.get(path or '', '?')})" if path else "none"
        projector = ", ".join([*(p + (" (inside the vision tower)" if p in self.inner_projector else "")
                                  for p in self.projector_modules), *self.projector_params]) or "none"
        return {
            Component.VISION: f"{at(self.vision)}, {len(self.layers[Component.VISION])} layers",
            Component.PROJECTOR: projector,
            Component.LLM: f"{at(self.language)}, {len(self.layers[Component.LLM])} layers, "
                           f"embeddings {self.embeddings}, head {self.lm_head or 'none'}",
        }

    def roots(self) -> dict[str, list[str]]:
        """Paths per component as the model index lists them (`llm` includes a head outside it)."""
        head = [self.lm_head] if self.lm_head else []
        outside = head and not _under(self.lm_head or "", self.language)
        return {
            Component.VISION: [self.vision],
            Component.PROJECTOR: [*self.projector_modules, *self.projector_params],
            Component.LLM: [self.language, *(head if outside else [])],
            "lm_head": head,
            "embeddings": [self.embeddings],
        }


def classify(model: torch.nn.Module) -> ModelComponents:
    """Find the components of a vision-language model (real, meta or fake tensors alike)."""
    config = model.config
    vision, language = _towers(model, config)
    embeddings = _path_of(model, model.get_input_embeddings())
    head_module = model.get_output_embeddings()
    lm_head = _path_of(model, head_module) if head_module is not None else None
    layers = {Component.VISION: _layers(model, vision, _layer_count(config.vision_config), "vision tower"),
              Component.LLM: _layers(model, language, _layer_count(config.get_text_config()), "language model")}
    text_width = int(model.get_input_embeddings().weight.shape[-1])
    inner = _inner_projector(model, vision, layers[Component.VISION], text_width)
    layer_of = {path: i for paths in layers.values() for i, path in enumerate(paths)}
    params = {name: _place(name, vision, language, embeddings, lm_head, layer_of, inner)
              for name, _ in model.named_parameters(remove_duplicate=False)}
    modules, bare = _projector_roots(model, params)
    types = {path: type(model.get_submodule(path)).__name__
             for path in (vision, language, embeddings, lm_head) if path is not None}
    return ModelComponents(vision, language, embeddings, lm_head, layers, modules, bare, params, inner, types)


# -- finding the parts ---------------------------------------------------------------------

def _towers(model: torch.nn.Module, config: Any) -> tuple[str, str]:
    """The outermost sub-models whose config is the vision_config / text config object."""
    from transformers import PreTrainedModel

    vision_config = getattr(config, "vision_config", None)
    text_config = config.get_text_config()
    vision = language = None
    for path, module in model.named_modules():
        if not path or not isinstance(module, PreTrainedModel):
            continue
        cfg = getattr(module, "config", None)
        if vision is None and vision_config is not None and cfg is vision_config:
            vision = path
        elif language is None and text_config is not config and cfg is text_config:
            language = path
    if vision is None or language is None:
        found = [f"{what} at {path}" for what, path in (("a language model", language), ("a vision tower", vision))
                 if path is not None]
        missing = " and ".join(w for w, p in (("vision tower", vision), ("language model", language)) if p is None)
        raise ComponentError(
            f"{type(model).__name__}: not a vision encoder -> projector -> language model shape freezelab "
            f"recognises: could not find its {missing} (a sub-model whose config is the model's "
            f"{'vision_config' if vision is None else 'text config'})"
            + (f"; found {', '.join(found)}" if found else ""))
    return vision, language


def _layer_count(config: Any) -> int:
    count = getattr(config, "num_hidden_layers", None)
    return int(count) if isinstance(count, int) else 0


def _layers(model: torch.nn.Module, root: str, count: int, what: str) -> list[str]:
    """The ModuleList of `count` blocks under `root` (the tower's layer stack)."""
    import torch

    for path, module in model.get_submodule(root).named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and count > 0:
            prefix = f"{root}.{path}" if path else root
            return [f"{prefix}.{i}" for i in range(count)]
    raise ComponentError(f"{type(model).__name__}: found the {what} at {root} but not its layer stack (a list "
                         f"of {count} blocks, as its config's num_hidden_layers says)")


def _widths(module: torch.nn.Module) -> tuple[int | None, int | None]:
    """(in_features of the first Linear, out_features of the last one) in a module, None if it has none."""
    import torch

    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return None, None
    return linears[0].in_features, linears[-1].out_features


def _tower_width(model: torch.nn.Module, first_layer: str) -> int:
    """The vision tower's hidden width: the most common size of its first layer's 1-D parameters."""
    sizes = [p.shape[0] for p in model.get_submodule(first_layer).parameters() if p.dim() == 1]
    return max(set(sizes), key=sizes.count) if sizes else 0


def _inner_projector(model: torch.nn.Module, vision: str, layers: list[str], text_width: int) -> tuple[str, ...]:
    """Children of the vision tower registered after its layer stack that map into the language model's
    width from another width (Qwen's merger, Qwen3-VL's deepstack mergers): projector, not vision."""
    tower = model.get_submodule(vision)
    stack_child = layers[0][len(vision) + 1:].split(".")[0] if layers else None
    width = _tower_width(model, layers[0]) if layers else 0
    found: list[str] = []
    after = False
    for name, child in tower.named_children():
        if name == stack_child:
            after = True
            continue
        first_in, last_out = _widths(child)
        if after and last_out == text_width and (text_width != width or first_in != width):
            found.append(f"{vision}.{name}")
    return tuple(found)


def _path_of(model: torch.nn.Module, target: torch.nn.Module) -> str:
    return next(path for path, m in model.named_modules() if m is target)


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def ancestors(path: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `a.b`, `a`]."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts), 0, -1)]


def _place(name: str, vision: str, language: str, embeddings: str, lm_head: str | None,
           layer_of: dict[str, int], inner: tuple[str, ...] = ()) -> Place:
    layer = next((layer_of[p] for p in ancestors(name.rpartition(".")[0]) if p in layer_of), None)
    if any(_under(name, p) for p in inner):
        return Place(Component.PROJECTOR, Part.PROJECTOR)
    if _under(name, vision):
        return Place(Component.VISION, Part.VISION_OTHER if layer is None else Part.VISION_LAYERS, layer)
    if lm_head is not None and _under(name, lm_head):
        return Place(Component.LLM, Part.LM_HEAD)
    if _under(name, embeddings):
        return Place(Component.LLM, Part.EMBEDDINGS)
    if _under(name, language):
        return Place(Component.LLM, Part.LLM_OTHER if layer is None else Part.LLM_LAYERS, layer)
    return Place(Component.PROJECTOR, Part.PROJECTOR)


def _projector_roots(model: torch.nn.Module, params: dict[str, Place]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Outermost modules whose parameters are all projector parameters, and projector parameters
    registered directly on a module that holds others too (LLaVA-NeXT's image_newline).
    A tensor registered under several names counts with its first name."""
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
    is_projector: dict[str, bool] = {}
    modules: list[str] = []
    bare: list[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        names = {first[id(p)] for p in module.parameters()}
        mine = bool(names) and all(params[n].component == Component.PROJECTOR for n in names)
        is_projector[path] = mine
        if not mine:
            bare += [first[id(p)] for p in module.parameters(recurse=False)
                     if params[first[id(p)]].component == Component.PROJECTOR]
        elif path and not is_projector[path.rpartition(".")[0]]:
            modules.append(path)
    return tuple(modules), tuple(bare)
