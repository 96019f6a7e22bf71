"""The model of a simulation: built from its config on the meta device, moved to fake tensors
with its ties kept, and given the freeze plan and the requires_grad hooks of the workload."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from freezelab.components import classify
from freezelab.errors import SimulationError
from freezelab.families import model_class
from freezelab.memory.simulate.run import Run
from freezelab.peft_targets import is_adapter_name, peft_name


def build(run: Run) -> None:
    """The model class of the config, on the meta device, in the workload's dtype."""
    cls = model_class(run.model_type)
    # sdpa: transformers' default, SDPA wherever a sub-model supports it (Gemma 2 falls back to eager);
    # eager: everywhere
    attn = {} if run.w.attn == "sdpa" else {"attn_implementation": run.w.attn}
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls._from_config(run.config, dtype=run.dtype, **attn)
    eager = [name for name, sub in _sub_configs(model.config) if getattr(sub, "_attn_implementation", None) == "eager"]
    if run.w.attn == "sdpa" and eager:
        run.note_once(f"{', '.join(eager)} cannot use SDPA in transformers: eager attention there, as on a GPU")
    # The calibration protocol's `model.config.use_cache = False`: in transformers 5.x it
    # does not reach the text config, so the language model still fills a KV cache during
    # the training forward (K and V of every layer, held by the output until it is
    # deleted). The H100 measurements include it; so does the simulation.
    model.config.use_cache = False
    run.model = model
    run.cfg = model.config
    run.parts = classify(model)
    if run.adapters is not None:
        _add_adapters(run)


def _sub_configs(config: Any) -> list[tuple[str, Any]]:
    return [(key, getattr(config, key)) for key in getattr(config, "sub_configs", {}) if getattr(config, key, None)]


def materialize(run: Run) -> None:
    """Give every meta parameter/buffer fake storage (inside the fake mode), keeping ties.

    Equivalent to `to_empty()` but memoised on the tensor object, so weights that are
    tied (lm_head / embed_tokens with tie_word_embeddings) stay one Parameter; the tie
    is checked afterwards. No initialisation runs (SigLIP's trunc_normal_ is
    data-dependent and would fail on fake tensors).
    """
    memo: dict[int, torch.Tensor] = {}
    for module in run.model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = _fake_like(p, memo, parameter=True)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = _fake_like(b, memo, parameter=False)
    text = run.cfg.get_text_config()
    if getattr(run.cfg, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False):
        emb = run.model.get_input_embeddings()
        out = run.model.get_output_embeddings()
        if out is not None and out.weight is not emb.weight:
            out.weight = emb.weight  # re-tie (HF ties at construction; keep it after moving)


def materialize_sharded(run: Run) -> None:
    """Fake storage for each rank's shards of a model FSDP2 sharded on the meta device (inside the fake
    mode: FSDP2's own `_apply` re-pads the shards), its buffers, and the ties kept."""
    allowed = run.fake_mode.allow_non_fake_inputs  # the real ids and grids (fake.concrete) need it on
    run.fake_mode.allow_non_fake_inputs = True  # empty_like of each meta shard, inside the fake mode
    try:
        run.model.to_empty(device="cpu")
    finally:
        run.fake_mode.allow_non_fake_inputs = allowed
    text = run.cfg.get_text_config()
    if getattr(run.cfg, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False):
        emb, out = run.model.get_input_embeddings(), run.model.get_output_embeddings()
        if out is not None and out.weight is not emb.weight:
            raise SimulationError("the tied output head lost its tie while the sharded model was materialised")


def _fake_like(t: torch.Tensor, memo: dict[int, torch.Tensor], *, parameter: bool) -> torch.Tensor:
    new = memo.get(id(t))
    if new is None:
        new = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
        if parameter:
            new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
        memo[id(t)] = new
    return new


def _add_adapters(run: Run) -> None:
    """On the meta model, before it moves to fake tensors (a module's `.to()` cannot swap fake parameters):
    the modelled 4- / 8-bit layers of a quantized base, then PEFT's own adapters with the plan's mask."""
    from freezelab.memory.simulate.quantized import CUSTOM_MODULES, quantize_fake
    from freezelab.peft_build import wrap

    adapters, index = run.adapters, run.index
    assert adapters is not None and index is not None
    if adapters.quantized:
        quantize_fake(run.model, index, adapters)
    if adapters.layers:
        mask = [any(n in run.trainable for n in p.names) for p in index.params]
        with torch.device("meta"):
            wrap(run.model, index, adapters, mask, CUSTOM_MODULES if adapters.quantized else None)


def _trainable_names(run: Run) -> set[str]:
    """The plan's trainable names as the (adapted) model spells them."""
    if run.adapters is None or not run.adapters.layers:
        return set(run.trainable)
    adapted = frozenset(a.path for a in run.adapters.layers)
    return {peft_name(n, adapted) for n in run.trainable}


def apply_plan(run: Run) -> None:
    """requires_grad from the plan's trainable names; the adapters (PEFT) and the quantized base; the
    input-embedding hooks that gradient checkpointing installs (or that were left over from it), after the
    adapters, as a Trainer turns checkpointing on for a PEFT model; training mode."""
    named = dict(run.model.named_parameters(remove_duplicate=False))
    trainable = _trainable_names(run)
    unknown = sorted(n for n in trainable if n not in named)
    if unknown:
        raise SimulationError(f"{len(unknown)} trainable name(s) are not parameters of this model: "
                              + ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
    train_ids = {id(named[n]) for n in trainable}
    for name, p in run.model.named_parameters():
        p.requires_grad_(id(p) in train_ids or is_adapter_name(name))
    if run.w.grad_ckpt:
        run.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif run.input_require_grads:
        run.model.enable_input_require_grads()
    run.model.train()
