"""The data flow of one LLaVA training step as a list of stages, from the index alone.

vision embeddings -> vision layers -> (post-norm) -> projector -> merge into the LLM's input
embeddings -> decoder layers -> final norm -> lm_head -> loss.

Each stage runs its ops on a `Tape` (freezelab.memory.activations) with the real shapes of this
model and workload, which yields what it keeps for the backward pass, its transients, which
gradients its backward produces, and its ops in order (`Stage.program`, for the allocator replay).
A stage keeps activations only if something at or before it requires grad: a trainable parameter
upstream, or transformers' input-embedding hooks that gradient checkpointing installs (even a frozen
vision tower then builds a graph). Layers behind the vision feature layer still run but never get
a backward; what they save lives as long as the model output that references them. Each stage also
carries what its ops cost in compute (`Stage.cost`, from the same tape: FLOPs split by forward,
input and weight gradients; `freezelab.compute.flops` adds them up, freeze- and checkpointing-aware).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from freezelab.compute import cost as costs
from freezelab.compute.cost import Cost
from freezelab.index import ModelIndex
from freezelab.memory.activations import Numerics
from freezelab.memory.adapter_ops import AdapterSpec
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.layer_memo import kept_layer, layer_key
from freezelab.memory.llava_layers import Dims, decoder_layer as _decoder_layer, vision_layer as _vision_layer
from freezelab.memory.structure import find as _find, shape_of as _shape
from freezelab.memory.structure import layer_params as _layer_params, relative as _relative
from freezelab.memory.structure import lm_head_param as _lm_head, text_hidden as _text_hidden
from freezelab.memory.tape_order import OrderedTape, Program
from freezelab.tokens import ImageLayout


class ActivationGroup(StrEnum):
    """The stages' groups of activation bytes: the keys of the analytic estimate's
    `activations_by_component` (the head and the loss after it are one group)."""

    VISION = "vision"
    PROJECTOR = "projector"
    LLM = "llm"
    HEAD = "lm_head+loss"


ACTIVATION_GROUPS: tuple[ActivationGroup, ...] = tuple(ActivationGroup)
VISION, PROJECTOR, LLM, HEAD = ACTIVATION_GROUPS


@dataclass
class Stage:
    name: str
    component: ActivationGroup
    kept: int = 0               # saved for backward from its forward until its backward
    fwd_extra: int = 0          # transient on top while its forward runs
    bwd_extra: int = 0          # transient on top while its backward runs (incl. a checkpoint recompute)
    grad_params: list[int] = field(default_factory=list)  # parameters whose gradient its backward makes
    backward: bool = False      # does the backward pass run through it
    held: int = 0               # kept until the model output is dropped (after backward), not at its backward
    out_grad: bool = False      # does its output require grad
    dead: bool = False          # runs forward, but feeds nothing the loss depends on
    forward_only: int = 0       # alive from its forward until the forward pass ends (autocast weight cache)
    program: Program | None = None  # its ops in order (freezelab.memory.tape_order), when it has a tape
    checkpointed: bool = False  # keeps only its input; backward replays its forward
    cost: Cost = field(default_factory=Cost)  # FLOPs and bytes of its forward and (if it runs) backward
    replay: Cost | None = None  # what its backward recomputes first (gradient checkpointing), if anything

    @property
    def keeps(self) -> int:
        return self.kept + self.held


@dataclass
class Flow:
    """Inputs to building the stages."""

    index: ModelIndex
    mask: list[bool]
    num: Numerics
    batch: int
    seq: int                    # LLM tokens per sample
    images: int                 # images per sample
    layout: ImageLayout | None  # all images of one sample (freezelab.tokens.combined); None: text only
    ckpt: bool
    use_cache: bool = True      # the text model's KV cache (text_config.use_cache; off under checkpointing)
    cache_values_follow_keys: bool = False  # transformers < 5.24 stores cached values in the keys' dtype
    input_grads: bool | None = None  # transformers' input-embedding requires_grad hooks (None: = ckpt)
    layouts: tuple[ImageLayout, ...] = ()  # each image of one sample (the families of memory.image_paths read them)
    spec: AdapterSpec = field(default_factory=AdapterSpec)  # adapted and quantized Linear layers

    @property
    def hooks(self) -> bool:
        return self.ckpt if self.input_grads is None else self.input_grads

    def trainable(self, i: int | None) -> bool:
        return i is not None and self.mask[i]

    def numel(self, i: int) -> int:
        return self.index.params[i].numel

    def tape(self) -> OrderedTape:
        return OrderedTape(self.num, self.trainable, self.numel, self.spec)


Recipe = Callable[..., str]  # (tape, params by relative name, input, hidden, inter, dims, batch, seq) -> output


def _layer_stage(f: Flow, recipe: Recipe, name: str, component: str, p: dict[str, int], flow_in: bool,
                 rows: int, hidden: int, inter: int, d: Dims, batch: int, seq: int,
                 cache: dict[tuple[Any, ...], Stage], cached: tuple[str, ...] = ()) -> Stage:
    """One transformer layer: identical layers with the same flags share the first one's stage in a
    build (`cache`), kept per index (freezelab.memory.layer_memo) with its program over that first
    one's parameters. `cached`: tensors the model output also references (the KV cache): held until
    the output is dropped after backward, also where autograd saves them (the cache is their last reference)."""
    key = layer_key(f, recipe, component, p, flow_in, (rows, hidden, inter, d, batch, seq, cached))
    stage = cache.get(key)
    if stage is None:
        stage = cache[key] = kept_layer(f.index, key, p, lambda: _new_layer_stage(
            f, recipe, name, component, p, flow_in, (rows, hidden, inter, d, batch, seq), cached))
    copy = object.__new__(Stage)
    copy.__dict__.update(stage.__dict__)
    copy.name, copy.grad_params = name, []
    return copy


def _new_layer_stage(f: Flow, recipe: Recipe, name: str, component: str, p: dict[str, int], flow_in: bool,
                     shape: tuple[int, int, int, Dims, int, int], cached: tuple[str, ...]) -> Stage:
    rows, hidden, inter, d, batch, seq = shape
    t = f.tape()
    t.kv_cache = bool(cached) and not f.ckpt
    t.kv_values_follow_keys = f.cache_values_follow_keys
    x = t.input("x", rows * hidden, f.num.stream, flow_in, hidden)
    out = recipe(t, p, x, hidden, inter, d, batch, seq)
    stage = Stage(name, component, out_grad=t.grad(out), program=t.program(out, cached if t.kv_cache else ()),
                  cost=t.cost)
    prog = stage.program
    if f.ckpt and stage.out_grad:
        stage.checkpointed = True
        # non-reentrant checkpoint keeps only the layer's input; backward replays the layer
        stage.replay = t.replay
        stage.kept = t.nbytes(x)
        stage.bwd_extra = max(prog.backward_peak(recompute=True), t.kept + t.dora_extra)  # DoRA's norm again
    else:
        # op by op its saved tensors go as the backward passes them (the KV cache's stay: held, not kept)
        stage.kept = t.kept - prog.held_saved
        stage.bwd_extra = prog.backward_peak(recompute=False) - (stage.kept - (t.nbytes(x) if x in t.saved else 0))
    stage.fwd_extra = max(prog.forward_peak(checkpointed=stage.checkpointed),  # DoRA: its weight norm
                          0 if f.ckpt and stage.out_grad or not t.dora_fwd else t.dora_fwd + t.nbytes(out))
    stage.forward_only = t.autocast_cached if stage.checkpointed else t.forward_cached
    stage.held = sum(t.nbytes(n) for n in prog.held)
    return stage


# -- the towers -------------------------------------------------------------------------------

def _text_dims(config: dict[str, Any]) -> Dims:
    text = config.get("text_config") or {}
    heads = int(text.get("num_attention_heads") or 1)
    kv = int(text.get("num_key_value_heads") or heads)
    hidden = int(text.get("hidden_size") or 0)
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    return Dims(heads, kv, head_dim, str(text.get("hidden_act", "silu")))


def _vision_dims(config: dict[str, Any]) -> Dims:
    vision = config.get("vision_config") or {}
    heads = int(vision.get("num_attention_heads") or 1)
    hidden = int(vision.get("hidden_size") or 0)
    return Dims(heads, heads, hidden // heads if heads else 0, str(vision.get("hidden_act", "gelu")))


def feature_index(config: dict[str, Any], num_layers: int) -> tuple[int, int]:
    """(highest hidden_states index the projector reads, how many layers it reads)."""
    layer = config.get("vision_feature_layer", config.get("vision_feature_layers", -1))
    layers = layer if isinstance(layer, (list, tuple)) else [layer]
    return max(int(i) % (num_layers + 1) for i in layers), len(layers)


def _hooked_leaf(stage: Stage, nbytes: int) -> None:
    """transformers' input hook makes a frozen embedding's output a leaf that requires grad: its
    AccumulateGrad node holds it until the backward reaches it, and gives it a .grad there."""
    stage.kept += nbytes
    stage.bwd_extra += nbytes


def _vision_stages(f: Flow, stages: list[Stage]) -> tuple[bool, int]:
    """Vision tower stages; returns (feature requires grad, feature width)."""
    index, config, layout = f.index, f.index.config, f.layout
    assert layout is not None
    root = index.roots["vision"][0]
    rel = _relative(index, root)
    d = _vision_dims(config)
    hidden = int((config.get("vision_config") or {}).get("hidden_size") or 0)
    tiles = f.batch * layout.tiles  # the layout holds all images of one sample
    rows = tiles * layout.tile_tokens
    emb_params = [i for n, i in rel.items() if n.startswith("embeddings.")]
    # the patch conv saves only the (resident) pixels; transformers' input hook marks its output
    flow = f.hooks or any(f.mask[i] for i in emb_params)
    emb = Stage("vision.embeddings", VISION, grad_params=emb_params, out_grad=flow,
                fwd_extra=3 * rounded(rows * hidden * f.num.stream),
                cost=_patch_cost(f, rel, tiles, hidden) + costs.traffic(5 * f.num.stream * rows * hidden, backward=flow))
    if f.hooks and not any(f.mask[i] for i in emb_params):
        _hooked_leaf(emb, rounded(rows * hidden * f.num.stream))
    stages.append(emb)
    pre = _find(rel, "pre_layrnorm.weight")
    if pre is not None:
        t = f.tape()
        x = t.input("emb", rows * hidden, f.num.stream, flow, hidden)
        y = t.layer_norm(x, "pre", pre, _find(rel, "pre_layrnorm.bias"))
        flow = t.grad(y)
        stages.append(Stage("vision.pre_layrnorm", VISION, t.kept, t.fwd_extra, t.bwd_extra,
                            [i for i in (pre, _find(rel, "pre_layrnorm.bias")) if i is not None], out_grad=flow,
                            program=t.program(y), cost=t.cost))
    layer_params = _layer_params(index, "vision")
    used, n_features = feature_index(config, len(layer_params))
    cache: dict[tuple[Any, ...], Stage] = {}
    feature_grad = flow if used == 0 else False
    for i, p in enumerate(layer_params):
        inter = _shape(index, _find(p, "fc1.weight"), 0, 4 * hidden)
        st = _layer_stage(f, _vision_layer, f"vision.layers.{i}", VISION, p, flow, rows, hidden, inter, d,
                          tiles, layout.tile_tokens, cache)
        st.grad_params = list(p.values())
        if i >= used:  # runs, but feeds only hidden states the projector ignores
            st.held, st.kept, st.dead = st.kept, 0, True
        flow = st.out_grad
        if i == used - 1:
            feature_grad = flow
        stages.append(st)
    # tensors the model output keeps until it is dropped: last hidden state and the read layers
    post = [i for n, i in rel.items() if n.startswith("post_layernorm.")]
    held = (n_features + 1) * rounded(rows * hidden * f.num.stream)
    post_grad = flow or any(f.mask[i] for i in post)
    if post and post_grad and "siglip" in str((config.get("vision_config") or {}).get("model_type")):
        held += 2 * rounded(rows * hidden * f.num.stream)  # SigLIP normalises the whole sequence
    stages.append(Stage("vision.post", VISION, held=held, dead=True))
    return feature_grad, n_features * hidden


def _patch_cost(f: Flow, rel: dict[str, int], tiles: int, hidden: int) -> Cost:
    """The patch embedding: a stride-`patch` convolution, i.e. one (3·p·p x hidden) matmul per patch.
    Pixels never require grad; the weight's gradient is made when it trains."""
    vision = f.index.config.get("vision_config") or {}
    patch = int(vision.get("patch_size") or 1)
    patches = (int(vision.get("image_size") or 0) // patch) ** 2
    weight = _find(rel, "patch_embedding.weight")
    channels = _shape(f.index, weight, 1, int(vision.get("num_channels") or 3))
    return costs.matmul(tiles * patches, channels * patch * patch, hidden, input_grad=False,
                        weight_grad=f.trainable(weight))


def _projector_stages(f: Flow, stages: list[Stage], feature_grad: bool, width: int) -> bool:
    index, config, layout = f.index, f.index.config, f.layout
    assert layout is not None
    rel = {}
    for root in index.roots.get("projector", []):
        if root in index.module_by_path:
            rel.update(_relative(index, root))
        elif root in index.by_name:
            rel[root.rsplit(".", 1)[-1]] = index.by_name[root]
    text_hidden = _shape(index, _find(rel, "linear_2.weight"), 0, 0) or _text_hidden(index)
    tiles = f.batch * layout.tiles
    rows = tiles * layout.features_per_tile
    t = f.tape()
    # the CLS-dropping slice / feature concatenation hands linear_1 a fresh contiguous tensor
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    norm = _find(rel, "projector_layernorm.weight")
    if norm is not None:
        x = t.layer_norm(x, "ln", norm, _find(rel, "projector_layernorm.bias"))
    h = t.linear(x, "linear_1", text_hidden, _find(rel, "linear_1.weight"), _find(rel, "linear_1.bias"))
    h = t.act(str(config.get("projector_hidden_act", "gelu")), h, "act")
    y = t.linear(h, "linear_2", text_hidden, _find(rel, "linear_2.weight"), _find(rel, "linear_2.bias"))
    newline = _find(rel, "image_newline")
    tokens = f.batch * layout.image_tokens
    out_grad = t.grad(y) or f.trainable(newline)
    held = t.nbytes(y)
    if newline is not None:  # any-res packing: permute, unpad, cat newlines into new tensors
        packed = t.new("packed", tokens * text_hidden, f.num.compute, out_grad, text_hidden)
        held = t.nbytes(packed)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=held, out_grad=out_grad, forward_only=t.forward_cached,
                        program=t.program(packed if newline is not None else y), cost=t.cost))
    return out_grad


def _llm_stages(f: Flow, stages: list[Stage], image_grad: bool) -> None:
    index, config = f.index, f.index.config
    d = _text_dims(config)
    embed = index.module_by_path[index.roots["embeddings"][0]].own[0]
    vocab, hidden = index.params[embed].shape[:2]
    n = f.batch * f.seq
    stream = rounded(n * hidden * f.num.stream)
    flow = f.hooks or f.mask[embed] or image_grad
    layer_params = _layer_params(index, "llm")
    # cos/sin of the rotary embedding: computed once, saved by every layer's rotary products
    rope = 2 * rounded(n * d.head_dim * f.num.stream)
    # the image features scattered into the embedded text (read and write a row per token)
    merge = Stage("llm.embeddings", LLM, fwd_extra=2 * stream, out_grad=flow,
                  cost=costs.traffic(5 * f.num.stream * n * hidden, backward=flow))
    # the token lookup runs before the vision tower (transformers embeds input_ids first), so its
    # backward, which makes the embedding's gradient, comes last
    lookup = Stage("llm.embed_tokens", LLM, grad_params=[embed], out_grad=f.mask[embed])  # its weight's gradient
    if index.params[embed].aliases and f.mask[embed]:  # tied: the embedding's gradient, and its sum with lm_head's
        lookup.bwd_extra = 2 * rounded(vocab * hidden * f.num.param)
    stages.insert(0, lookup)
    if f.hooks and not f.mask[embed]:
        _hooked_leaf(merge, stream)
    stages.append(merge)
    cache: dict[tuple[Any, ...], Stage] = {}
    first_flow: int | None = None
    mask = rounded(f.batch * f.seq * f.seq * f.num.stream) if f.num.eager else 0  # in the embeddings' dtype
    from freezelab.memory.image_paths import decoder_recipe

    recipe = decoder_recipe(f) or _decoder_layer
    for i, p in enumerate(layer_params):
        inter = _shape(index, _find(p, "gate_proj.weight", "fc1.weight"), 0, 4 * hidden)
        st = _layer_stage(f, recipe, f"llm.layers.{i}", LLM, p, flow, n, hidden, inter, d,
                          f.batch, f.seq, cache, ("k_cache", "v_cache") if f.use_cache else ())
        st.grad_params = list(p.values())
        if st.out_grad and first_flow is None:
            first_flow = len(stages)
        st.fwd_extra += mask  # eager's materialised (b, 1, s, s) causal mask lives through the forward
        flow = st.out_grad
        stages.append(st)
    if first_flow is not None:
        # checkpointing keeps each layer's inputs for its recomputation: the causal mask too
        stages[first_flow].kept += rope + (mask if f.ckpt else 0)
    start = stages.index(merge) + 1
    layers = stages[start:]
    for st in stages[start:first_flow if first_flow is not None else len(stages)]:
        st.fwd_extra += rope  # not kept yet: alive through the forward
    first = layers[0].program if layers else None
    if first is not None and first.inp not in first.saved and not layers[0].checkpointed:
        for st in layers[1:]:  # the model's `inputs_embeds`, referenced until the language model returns
            st.fwd_extra += stream
    llm_rel = _relative(index, index.roots["llm"][0])
    norm = _find(llm_rel, "norm.weight")
    t = f.tape()
    x = t.input("h", n * hidden, f.num.stream, flow, hidden)
    y = t.rms_norm(x, "final_norm", norm)
    stages.append(Stage("llm.norm", LLM, t.kept, t.fwd_extra, t.bwd_extra, [norm] if norm is not None else [],
                        out_grad=t.grad(y), program=t.program(y), cost=t.cost))
    _head_stages(f, stages, t.grad(y), vocab, hidden)


def _head_stages(f: Flow, stages: list[Stage], flow: bool, vocab: int, hidden: int) -> None:
    """lm_head, then transformers' ForCausalLMLoss: logits.float(), shift, cross_entropy
    (log_softmax saves its fp32 output; nll_loss's backward makes a full-size gradient)."""
    n = f.batch * f.seq
    head = _lm_head(f.index)
    t = f.tape()
    x = t.input("h", n * hidden, f.num.stream, flow, hidden)
    logits = t.linear(x, "logits", vocab, head)
    grad = t.grad(logits)
    logits_bytes = t.nbytes(logits)
    fp32 = rounded(n * vocab * 4)
    upcast = fp32 if f.num.compute != 4 else 0  # .float() copies 16-bit logits; a no-op on fp32
    # backward: the fp32 gradient cast back to the logits dtype, then grad_input of the matmul
    back = max(upcast + logits_bytes, logits_bytes + rounded(n * hidden * f.num.compute)) if grad else 0
    kept, fwd_extra = t.kept, t.fwd_extra
    if (f.index.config.get("text_config") or {}).get("final_logit_softcapping"):
        # Gemma 2: logits / cap, tanh (its output saved), * cap: the capped logits replace the raw ones
        kept += logits_bytes if grad else 0
        fwd_extra = max(fwd_extra, 3 * logits_bytes)
    # the model's forward holds the last hidden state (outputs.last_hidden_state) until it returns
    hidden = 0 if x in t.saved else t.nbytes(x)
    stages.append(Stage("lm_head", HEAD, kept, fwd_extra + hidden, back, [head] if head is not None else [],
                        held=logits_bytes, out_grad=grad, forward_only=t.forward_cached, program=t.program(logits),
                        cost=t.cost))
    # log_softmax writes its fp32 output while the upcast copy is still referenced (both live until the loss
    # function returns); with a backward that output is then kept
    loss = Stage("loss", HEAD, fwd_extra=upcast + fp32 + hidden, out_grad=grad,
                 cost=costs.traffic(costs.loss_bytes(t.t[logits].elem) * n * vocab, backward=grad))
    if grad:
        loss.kept = fp32                  # log_softmax output
        loss.bwd_extra = 2 * fp32         # nll_loss grad + log_softmax grad, alive together
    stages.append(loss)


layer_stage = _layer_stage  # the recipes of freezelab.memory.image_paths run through the same stage builder


def build(f: Flow) -> list[Stage]:
    """All stages in forward order, with backward flags set."""
    from freezelab.memory import image_paths

    stages: list[Stage] = []
    image_grad = False
    if f.layout is not None and f.images > 0 and f.index.model_type in image_paths.PATHS:
        image_grad = image_paths.image_stages(f, stages)
    elif f.layout is not None and f.images > 0:
        feature_grad, width = _vision_stages(f, stages)
        image_grad = _projector_stages(f, stages, feature_grad, width)
    _llm_stages(f, stages, image_grad)
    _mark_backward(stages)
    return stages


def _mark_backward(stages: list[Stage]) -> None:
    """The backward runs through every live stage whose output requires grad, if the loss does."""
    loss_grad = bool(stages) and stages[-1].out_grad
    for s in stages:
        s.backward = loss_grad and s.out_grad and not s.dead
        if not s.backward:
            s.grad_params = []
