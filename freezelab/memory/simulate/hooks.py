"""Who made each allocation: module and gradient hooks that set the ledger's current label.

The component roots come from `freezelab.components` (found by object, not by
name). A forward pre-hook on each root charges what the module allocates to
its component and a forward hook restores the previous label; a hook on each
root's output charges the backward through that component to it; a
post-accumulate-grad hook on each trainable parameter marks its `.grad` as a
gradient of its component.
"""

from __future__ import annotations

from typing import Any

import torch

from freezelab.components import Part
from freezelab.memory.fake.ledger import Label, TensorLedger
from freezelab.memory.result import Category, Phase
from freezelab.memory.simulate.run import Run
from freezelab.peft_targets import base_name


def param_labels(run: Run) -> dict[str, Label]:
    """Every parameter name (tied aliases too) -> its component, the output head on its own; an adapter's
    tensors and a wrapped base layer's (PEFT's names) take the label of the Linear they belong to."""
    assert run.parts is not None
    labels = {name: Label.LM_HEAD if place.part is Part.LM_HEAD else Label(place.component.value)
              for name, place in run.parts.params.items()}
    for name, _ in run.model.named_parameters(remove_duplicate=False):
        if name not in labels:
            labels[name] = labels.get(base_name(name), Label.OTHER)
    return labels


def _called(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules a forward calls: a ModuleList (Qwen3-VL's DeepStack mergers) is never called itself."""
    if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
        return [m for child in module.children() for m in _called(child)]
    return [module]


def component_roots(run: Run) -> dict[Label, list[torch.nn.Module]]:
    parts, model = run.parts, run.model
    assert parts is not None
    return {
        Label.VISION: [model.get_submodule(parts.vision)],
        Label.PROJECTOR: [m for p in parts.projector_modules for m in _called(model.get_submodule(p))],
        Label.LLM: [model.get_submodule(parts.language)],
        Label.LM_HEAD: [model.get_output_embeddings()],
    }


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) model output."""
    out: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            out.extend(tensors_in(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(tensors_in(v))
    return out


class _Hooks:
    """The label stack of nested component forwards, and the hook factories."""

    def __init__(self, ledger: TensorLedger) -> None:
        self.ledger = ledger
        self.stack: list[tuple[Category, Label]] = []

    def on_grad_of(self, comp: Label):
        cat = Category.LOGITS_LOSS if comp is Label.LM_HEAD else Category.ACTIVATIONS
        ledger = self.ledger

        def hook(grad):
            if ledger.phase is Phase.BACKWARD:
                ledger.category, ledger.component = cat, comp
            return None
        return hook

    def pre(self, comp: Label):
        ledger, stack = self.ledger, self.stack

        def hook(module, args):
            if ledger.phase is not Phase.FORWARD:
                return None
            stack.append((ledger.category, ledger.component))
            if comp is Label.LM_HEAD:
                ledger.category = Category.LOGITS_LOSS
            ledger.component = comp
            return None
        return hook

    def post(self, comp: Label):
        ledger, stack = self.ledger, self.stack

        def hook(module, args, output):
            if ledger.phase is not Phase.FORWARD:
                return None
            cat, outer = stack.pop() if stack else (Category.ACTIVATIONS, Label.OTHER)
            if comp is not Label.LM_HEAD:  # after the head: logits and the loss
                # back to the enclosing component (Qwen's merger runs inside the vision tower), else OTHER
                ledger.category = cat
                ledger.component = outer if outer in (Label.VISION, Label.PROJECTOR, Label.LLM) else Label.OTHER
            for t in tensors_in(output):
                if t.requires_grad:
                    t.register_hook(self.on_grad_of(comp))
            return None
        return hook


def install(run: Run, params: list[torch.nn.Parameter], labels: dict[str, Label]) -> list[Any]:
    """Install the hooks; returns their handles (remove them when the run ends)."""
    ledger = run.ledger
    h = _Hooks(ledger)
    handles: list[Any] = []
    for comp, mods in component_roots(run).items():
        for m in mods:
            if m is not None:
                handles.append(m.register_forward_pre_hook(h.pre(comp)))
                handles.append(m.register_forward_hook(h.post(comp)))
    names = {id(p): n for n, p in run.model.named_parameters()}

    def accumulated(p):
        if p.grad is not None:
            ledger.classify(p.grad, Category.GRADIENTS, labels.get(names.get(id(p), ""), Label.OTHER))

    for p in params:
        handles.append(p.register_post_accumulate_grad_hook(accumulated))
    return handles


def label_outputs(ledger: TensorLedger, out: Any) -> None:
    """Activations the caller holds through the model output until `del out`.

    The KV cache (filled because the protocol's top-level `use_cache=False` does not
    reach the text config) and returned hidden states are labelled `kv_cache` /
    `outputs` unless autograd needs them anyway (they require grad: attention / the
    next layer saved them for backward), in which case they stay with their component.
    """
    for key, value in out.items():
        if key in ("loss", "logits") or value is None:
            continue
        if hasattr(value, "layers") and not isinstance(value, (dict, list, tuple)):
            tensors = [t for layer in value.layers for t in (getattr(layer, "keys", None),
                                                              getattr(layer, "values", None))
                       if isinstance(t, torch.Tensor)]
            label = Label.KV_CACHE
        else:
            tensors, label = tensors_in(value), Label.OUTPUTS
        for t in tensors:
            e = ledger.entry_of(t)
            if e is not None and e.cat == Category.ACTIVATIONS and not t.requires_grad:
                e.comp = label
