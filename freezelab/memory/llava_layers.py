"""The layer recipes of the LLaVA classes, run on a `Tape` (freezelab.memory.activations) by
`freezelab.memory.stages`: CLIP's and SigLIP's encoder layer, and Llama's decoder layer (also
Mistral's, and Qwen2's with q/k/v biases). The other families' recipes are in
freezelab.memory.image_paths and freezelab.memory.blocks."""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.memory.activations import Tape
from freezelab.memory.structure import find as _find


@dataclass(frozen=True)
class Dims:
    heads: int
    kv_heads: int
    head_dim: int
    act: str


def vision_layer(t: Tape, p: dict[str, int], x: str, hidden: int, inter: int, d: Dims,
                 batch: int, seq: int) -> str:
    """CLIPEncoderLayer / SiglipEncoderLayer: pre-LN attention and MLP with residuals."""
    h = t.layer_norm(x, "ln1", _find(p, "layer_norm1.weight"), _find(p, "layer_norm1.bias"))
    q = t.linear(h, "q", hidden, _find(p, "q_proj.weight"), _find(p, "q_proj.bias"))
    k = t.linear(h, "k", hidden, _find(p, "k_proj.weight"), _find(p, "k_proj.bias"))
    v = t.linear(h, "v", hidden, _find(p, "v_proj.weight"), _find(p, "v_proj.bias"))
    a = t.attention(q, k, v, "attn", batch=batch, heads=d.heads, kv_heads=d.heads, seq=seq, head_dim=d.head_dim)
    o = t.linear(a, "o", hidden, _find(p, "out_proj.weight", "o_proj.weight"), _find(p, "out_proj.bias"))
    t.hold(h)  # the layer's `hidden_states` until self_attn returns
    r = t.add(x, o, "res1")
    h2 = t.layer_norm(r, "ln2", _find(p, "layer_norm2.weight"), _find(p, "layer_norm2.bias"))
    f = t.linear(h2, "fc1", inter, _find(p, "fc1.weight"), _find(p, "fc1.bias"))
    g = t.act(d.act, f, "gelu")
    m = t.linear(g, "fc2", hidden, _find(p, "fc2.weight"), _find(p, "fc2.bias"))
    t.hold(h2)  # ... and until the MLP returns
    return t.add(r, m, "out")


def decoder_layer(t: Tape, p: dict[str, int], x: str, hidden: int, inter: int, d: Dims,
                  batch: int, seq: int) -> str:
    """LlamaDecoderLayer (also Mistral, Qwen2 with q/k/v biases): RMSNorm, rotary, SwiGLU."""
    h = t.rms_norm(x, "norm1", _find(p, "input_layernorm.weight"))
    kv = d.kv_heads * d.head_dim
    q = t.linear(h, "q", d.heads * d.head_dim, _find(p, "q_proj.weight"), _find(p, "q_proj.bias"))
    k = t.linear(h, "k", kv, _find(p, "k_proj.weight"), _find(p, "k_proj.bias"))
    v = t.linear(h, "v", kv, _find(p, "v_proj.weight"), _find(p, "v_proj.bias"))
    q, k = t.rotary(q, "q_rot"), t.rotary(k, "k_rot")
    if t.kv_cache:  # DynamicCache copies k and v; attention reads the copies
        k = t.cache_copy(k, "k_cache", t.t[k].elem)
        v = t.cache_copy(v, "v_cache", t.t[k].elem if t.kv_values_follow_keys else t.t[v].elem)
    a = t.attention(q, k, v, "attn", batch=batch, heads=d.heads, kv_heads=d.kv_heads, seq=seq,
                    head_dim=d.head_dim)
    o = t.linear(a, "o", hidden, _find(p, "o_proj.weight"), _find(p, "o_proj.bias"))
    t.hold(h)  # the layer's `hidden_states` until self_attn returns
    r = t.add(x, o, "res1")
    h2 = t.rms_norm(r, "norm2", _find(p, "post_attention_layernorm.weight"))
    gate = t.linear(h2, "gate", inter, _find(p, "gate_proj.weight"), _find(p, "gate_proj.bias"))
    up = t.linear(h2, "up", inter, _find(p, "up_proj.weight"), _find(p, "up_proj.bias"))
    s = t.act("silu", gate, "silu")
    m = t.mul(s, up, "swiglu")
    down = t.linear(m, "down", hidden, _find(p, "down_proj.weight"), _find(p, "down_proj.bias"))
    t.hold(h2)  # ... and until the MLP returns
    return t.add(r, down, "out")
