"""The model of a simulation: built from its config on the meta device, moved to fake tensors
with its ties kept, and given the freeze plan and the requires_grad hooks of the workload."""

from __future__ import annotations

import inspect
import types
import warnings

import torch

from freezelab.components import classify
from freezelab.errors import SimulationError
from freezelab.families import model_class
from freezelab.memory.simulate.run import Run


def build(run: Run) -> None:
    """The model class of the config, on the meta device, in the workload's dtype."""
    cls = model_class(run.model_type)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls._from_config(run.config, dtype=run.dtype, attn_implementation=run.w.attn)
    # The calibration protocol's `model.config.use_cache = False`: in transformers 5.x it
    # does not reach the text config, so the language model still fills a KV cache during
    # the training forward (K and V of every layer, held by the output until it is
    # deleted). The H100 measurements include it; so does the simulation.
    model.config.use_cache = False
    run.model = model
    run.cfg = model.config
    run.parts = classify(model)


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
    _install_placeholder_mask(run)


def materialize_sharded(run: Run) -> None:
    """Fake storage for each rank's shards of a model FSDP2 sharded on the meta device (inside the fake
    mode: FSDP2's own `_apply` re-pads the shards), its buffers, and the ties kept."""
    run.fake_mode.allow_non_fake_inputs = True  # empty_like of each meta shard, inside the fake mode
    try:
        run.model.to_empty(device="cpu")
    finally:
        run.fake_mode.allow_non_fake_inputs = False
    text = run.cfg.get_text_config()
    if getattr(run.cfg, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False):
        emb, out = run.model.get_input_embeddings(), run.model.get_output_embeddings()
        if out is not None and out.weight is not emb.weight:
            raise SimulationError("the tied output head lost its tie while the sharded model was materialised")
    _install_placeholder_mask(run)


def _fake_like(t: torch.Tensor, memo: dict[int, torch.Tensor], *, parameter: bool) -> torch.Tensor:
    new = memo.get(id(t))
    if new is None:
        new = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
        if parameter:
            new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
        memo[id(t)] = new
    return new


def _install_placeholder_mask(run: Run) -> None:
    """Replace the data-dependent placeholder check (`torch_compilable_check` on a tensor
    sum, which fake tensors cannot evaluate) with the same mask and a static check of the
    count we put in the batch. Instance attribute: transformers itself is untouched."""
    inner = run.model.model
    with_video = "video_features" in inspect.signature(type(inner).get_placeholder_mask).parameters
    cfg = run.cfg

    def get_placeholder_mask(self_, input_ids, inputs_embeds, image_features=None, video_features=None):
        if input_ids is None:
            raise SimulationError("the training step cannot run as configured: the simulation passes "
                                  "input_ids; inputs_embeds-only is unsupported")
        image_mask = (input_ids == cfg.image_token_id).unsqueeze(-1).to(inputs_embeds.device)
        if image_features is not None:
            want = run.image_tokens_total
            got = image_features.numel() // inputs_embeds.shape[-1]
            if want is not None and got != want:
                raise SimulationError(
                    f"the training step cannot run as configured: image features and image tokens do "
                    f"not match: the batch has {want} image tokens, the model produced {got} features")
        if not with_video:
            return image_mask
        vid = getattr(cfg, "video_token_id", getattr(cfg, "video_token_index", -1))
        video_mask = (input_ids == vid).unsqueeze(-1).to(inputs_embeds.device)
        return image_mask, video_mask

    inner.get_placeholder_mask = types.MethodType(get_placeholder_mask, inner)


def apply_plan(run: Run) -> None:
    """requires_grad from the plan's trainable names; the input-embedding hooks that gradient
    checkpointing installs (or that were left over from it); training mode."""
    named = dict(run.model.named_parameters(remove_duplicate=False))
    unknown = sorted(n for n in run.trainable if n not in named)
    if unknown:
        raise SimulationError(f"{len(unknown)} trainable name(s) are not parameters of this model: "
                              + ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
    train_ids = {id(named[n]) for n in run.trainable}
    for p in run.model.parameters():
        p.requires_grad_(id(p) in train_ids)
    if run.w.grad_ckpt:
        run.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif run.input_require_grads:
        run.model.enable_input_require_grads()
    run.model.train()
