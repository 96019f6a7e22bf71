"""Layer recipes for the families beyond LLaVA, recorded on the activations tape.

One recipe per kind of block, each reading the layer's own parameters (by their
name relative to the layer) to know which op variant the block runs:

* `vision_block`: the pre-norm ViT block of SigLIP / Idefics3, InternViT (layer
  scale `lambda_1` / `lambda_2`), Qwen2-VL / 2.5-VL / 3-VL (fused `qkv`, 2D RoPE
  computed in fp32, attention per image or per window) and Pixtral (RMSNorm,
  gated MLP, 2D RoPE); a LayerNorm has a bias, an RMSNorm has not;
* `decoder_block`: Llama-style decoders with the Qwen3 / Gemma 3 q- and k-norms
  and the Gemma 2 / Gemma 3 sandwich norms (`post_attention_layernorm` on the
  attention output, `pre_` / `post_feedforward_layernorm` around the MLP).

`Groups` says how a layer's rows split into attention sequences: (count, length)
pairs, e.g. every tile of an image, every image of a Qwen batch, every window of
Qwen2.5-VL's windowed blocks. A split attention (Qwen's per-chunk SDPA) writes
each chunk's output separately and concatenates them.
"""

from __future__ import annotations

from dataclasses import dataclass

from freezelab.compute import cost as costs
from freezelab.memory.activations import Tape
from freezelab.memory.structure import find

Groups = tuple[tuple[int, int], ...]   # (sequences, tokens per sequence)

_NORM1 = ("layer_norm1", "norm1", "layernorm_before", "attention_norm")
_NORM2 = ("layer_norm2", "norm2", "layernorm_after", "ffn_norm")
_OUT = ("out_proj", "o_proj", "proj", "projection_layer", "wo")


@dataclass(frozen=True)
class Heads:
    heads: int
    kv_heads: int
    head_dim: int
    act: str


def norm(t: Tape, p: dict[str, int], x: str, out: str, names: tuple[str, ...]) -> str:
    """The first of `names` the layer has: a LayerNorm when it has a bias, else an RMSNorm."""
    for name in names:
        weight = find(p, f"{name}.weight")
        if weight is not None:
            bias = find(p, f"{name}.bias")
            if bias is not None:
                return t.layer_norm(x, out, weight, bias)
            return t.rms_norm(x, out, weight)
    return x


def gemma_rms_norm(t: Tape, x: str, out: str, weight: int | None) -> str:
    """Gemma's RMSNorm: normalised in fp32 and multiplied by (1 + weight) in fp32, then cast back. The
    fp32 copy of the input and the rsqrt are saved for the input's gradient, the fp32 normalised input
    for the weight's."""
    src = t.t[x]
    flow, w_train = src.grad, t.trainable(weight)
    fp32 = 4 * src.numel
    if flow:
        x32 = x if src.elem == 4 else t._new(f"{x}>32", src.numel, 4, True, src.width)
        t._save(x32, t._new(f"{out}.rstd", src.rows, 4, True))
    if w_train:
        t._save(t._new(f"{out}.normed", src.numel, 4, flow, src.width))
    y = t._new(out, src.numel, src.elem, flow or w_train, src.width)
    t._replayed(flow or w_train)
    t._fwd(3 * fp32 + t.nbytes(y))
    t._bwd(t._grad_bytes(y) + (3 * fp32 + src.nbytes if flow else 0))
    return y


def attention(t: Tape, q: str, k: str, v: str, out: str, groups: Groups, h: Heads, split: bool = False) -> str:
    """Self-attention over the groups' sequences; split: one call per sequence whose outputs are
    concatenated (Qwen's non-flash path splits q, k and v per chunk, even into one)."""
    if not split:
        n, s = groups[0] if len(groups) == 1 else (1, sum(s for _, s in groups))
        return t.attention(q, k, v, out, batch=n, heads=h.heads, kv_heads=h.kv_heads, seq=s, head_dim=h.head_dim)
    rows = 0
    for g, (n, s) in enumerate(groups):
        t.attention(q, k, v, f"{out}.{g}", batch=n, heads=h.heads, kv_heads=h.kv_heads, seq=s, head_dim=h.head_dim)
        rows += n * s
    return t.new(out, rows * h.heads * h.head_dim, t.num.compute, t.grad(q) or t.grad(k) or t.grad(v),
                 h.heads * h.head_dim)


def rotary_cast(t: Tape, x: str, out: str, numel: int, width: int) -> str:
    """Vision 2D RoPE (Qwen's apply_rotary_pos_emb_vision, Pixtral's): q * cos + rotate_half(q) * sin on
    an fp32 copy, cast back to the input's dtype. The products save only cos / sin (shared by every layer);
    the fp32 temporaries are transient."""
    src = t.t[x]
    y = t._new(out, numel, src.elem, src.grad, width)
    fp32 = 4 * numel
    t._fwd(3 * fp32 + t.nbytes(y))
    t._bwd(3 * fp32 + t._grad_bytes(y))
    return y


def _qkv(t: Tape, p: dict[str, int], x: str, hidden: int, h: Heads, rotary: bool) -> tuple[str, str, str]:
    fused = find(p, "qkv.weight")
    if fused is not None:  # one Linear; q, k, v are views of its output (v keeps all of it alive)
        qkv = t.linear(x, "qkv", 3 * hidden, fused, find(p, "qkv.bias"))
        if not rotary:
            return qkv, qkv, qkv
        rows = t.t[qkv].rows
        return (rotary_cast(t, qkv, "q_rot", rows * hidden, hidden), rotary_cast(t, qkv, "k_rot", rows * hidden, hidden),
                qkv)
    kv = h.kv_heads * h.head_dim
    q = t.linear(x, "q", h.heads * h.head_dim, find(p, "q_proj.weight"), find(p, "q_proj.bias"))
    k = t.linear(x, "k", kv, find(p, "k_proj.weight"), find(p, "k_proj.bias"))
    v = t.linear(x, "v", kv, find(p, "v_proj.weight"), find(p, "v_proj.bias"))
    if rotary:
        q = rotary_cast(t, q, "q_rot", t.t[q].numel, t.t[q].width)
        k = rotary_cast(t, k, "k_rot", t.t[k].numel, t.t[k].width)
    return q, k, v


def _mlp(t: Tape, p: dict[str, int], x: str, hidden: int, inter: int, act: str) -> str:
    gate = find(p, "gate_proj.weight")
    if gate is not None:
        g = t.linear(x, "gate", inter, gate, find(p, "gate_proj.bias"))
        up = t.linear(x, "up", inter, find(p, "up_proj.weight"), find(p, "up_proj.bias"))
        m = t.mul(t.act(act, g, "act"), up, "glu")
        return t.linear(m, "down", hidden, find(p, "down_proj.weight"), find(p, "down_proj.bias"))
    fc1 = find(p, "fc1.weight", "linear_fc1.weight")
    f = t.linear(x, "fc1", inter, fc1, find(p, "fc1.bias", "linear_fc1.bias"))
    g = t.act(act, f, "act")
    return t.linear(g, "fc2", hidden, find(p, "fc2.weight", "linear_fc2.weight"), find(p, "fc2.bias", "linear_fc2.bias"))


def _scaled(t: Tape, p: dict[str, int], x: str, name: str) -> str:
    """InternViT's layer scale: a learned per-channel factor (`lambda_1 * x`)."""
    scale = find(p, name)
    if scale is None:
        return x
    grad_in = t.grad(x)
    if t.trainable(scale):  # d lambda needs the input
        t._save(x)
    t._replayed(grad_in or t.trainable(scale))  # saves lambda (a checkpoint replays up to it) and / or x
    y = t.new(f"{name}.out", t.t[x].numel, t.t[x].elem, grad_in or t.trainable(scale), t.t[x].width)
    return y


def vision_block(t: Tape, p: dict[str, int], x: str, hidden: int, inter: int, h: Heads, groups: Groups,
                 rotary: bool, split: bool = False) -> str:
    """A pre-norm ViT block (see the module docstring for the variants)."""
    a_in = norm(t, p, x, "ln1", _NORM1)
    q, k, v = _qkv(t, p, a_in, hidden, h, rotary)
    a = attention(t, q, k, v, "attn", groups, h, split)
    o = t.linear(a, "o", hidden, find(p, *(f"{n}.weight" for n in _OUT)), find(p, *(f"{n}.bias" for n in _OUT)))
    r = t.add(x, _scaled(t, p, o, "lambda_1"), "res1")
    m = _mlp(t, p, norm(t, p, r, "ln2", _NORM2), hidden, inter, h.act)
    return t.add(r, _scaled(t, p, m, "lambda_2"), "out")


# -- decoders ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecoderKind:
    """How a decoder layer differs from Llama's."""

    gemma: bool = False        # Gemma norms (fp32, 1 + w) and sandwich norms around attention and MLP
    qk_norm: bool = False      # q_norm / k_norm over each head
    attention: str = "sdpa"    # sdpa | masked (memory-efficient kernel with a materialised mask) | softcap (eager)
    act: str = "silu"
    cap: float = 0.0           # attention logit soft-capping (Gemma 2)


def _norm_op(t: Tape, kind: DecoderKind, x: str, out: str, weight: int | None) -> str:
    return gemma_rms_norm(t, x, out, weight) if kind.gemma else t.rms_norm(x, out, weight)


def _per_head_norm(t: Tape, kind: DecoderKind, x: str, out: str, weight: int | None, head_dim: int) -> str:
    width = t.t[x].width
    t.t[x].width = head_dim  # normalised over each head: rows x heads vectors of head_dim
    y = _norm_op(t, kind, x, out, weight)
    t.t[x].width = t.t[y].width = width
    return y


def _repeated(t: Tape, x: str, rep: int) -> str:
    """repeat_kv / repeat_interleave: a copy of k or v for every query head."""
    if rep == 1:
        return x
    src = t.t[x]
    return t._new(f"{x}.rep", src.numel * rep, src.elem, src.grad, src.width * rep)


def masked_attention(t: Tape, q: str, k: str, v: str, out: str, h: Heads, batch: int, seq: int) -> str:
    """SDPA with a materialised (bool) mask on the memory-efficient kernel (fake.sdpa._efficient): k and v
    repeated to every head, the mask turned into an additive one in q's dtype (padded to 16 columns), and
    q, k, v, the output, the logsumexp and that mask saved for the backward."""
    need = t.grad(q) or t.grad(k) or t.grad(v)
    rep = h.heads // max(1, h.kv_heads)
    kr, vr = _repeated(t, k, rep), _repeated(t, v, rep)
    y = t._new(out, batch * seq * h.heads * h.head_dim, t.num.compute, need, h.heads * h.head_dim)
    mask = t._new(f"{out}.mask", batch * seq * (seq + (-seq) % 16), t.num.compute, False)
    if t.num.eager:  # eager attention with the same mask: bmm products, as FlopCounterMode counts them
        t._charge(costs.eager_attention(batch, h.heads, seq, h.head_dim, q_grad=t.grad(q), k_grad=t.grad(k),
                                        v_grad=t.grad(v)))
    else:
        t._charge(costs.fused_attention(batch, h.heads, seq, h.head_dim, backward=need))
    if need:
        t._save(q, kr, vr, y, mask, t._new(f"{out}.lse", batch * h.heads * seq, 4, False))
    t._replayed(need)
    t._fwd(t.nbytes(y) + t.nbytes(mask) + (t.nbytes(kr) + t.nbytes(vr) if rep > 1 else 0))
    t._bwd(t.nbytes(y) + t._grad_bytes(q, k, v) + (t._grad_bytes(kr, vr) if rep > 1 else 0)
           + 4 * batch * h.heads * seq * h.head_dim)
    return y


def softcap_attention(t: Tape, q: str, k: str, v: str, out: str, h: Heads, batch: int, seq: int) -> str:
    """Gemma 2's eager attention: scores scaled, divided by the cap, tanh (its output saved), times the cap,
    plus the mask, softmax in fp32 (saved) and its copy in the compute dtype (saved for the product with v)."""
    need = t.grad(q) or t.grad(k) or t.grad(v)
    rep = h.heads // max(1, h.kv_heads)
    kr, vr = _repeated(t, k, rep), _repeated(t, v, rep)
    scores = batch * h.heads * seq * seq
    c = t.num.compute
    tanh = t._new(f"{out}.tanh", scores, c, need)
    probs32 = t._new(f"{out}.probs32", scores, 4, need)
    probs = t._new(f"{out}.probs", scores, c, need)
    y = t._new(out, batch * seq * h.heads * h.head_dim, c, need, h.heads * h.head_dim)
    t._charge(costs.eager_attention(batch, h.heads, seq, h.head_dim, q_grad=t.grad(q), k_grad=t.grad(k),
                                    v_grad=t.grad(v)))
    if need:
        t._save(q, kr, tanh, probs32, probs, vr)
    t._replayed(need)
    step = t.nbytes(tanh)
    t._fwd(2 * step + t.nbytes(probs32) + t.nbytes(y))
    t._bwd(3 * step + t.nbytes(probs32) + t.nbytes(y) + t._grad_bytes(q, k, v))
    return y


def decoder_block(t: Tape, p: dict[str, int], x: str, hidden: int, inter: int, d: Heads, batch: int,
                  seq: int, *, kind: DecoderKind) -> str:
    """A decoder layer of the Llama family with the Qwen3 / Gemma variants of `kind`."""
    h = _norm_op(t, kind, x, "norm1", find(p, "input_layernorm.weight"))
    kv = d.kv_heads * d.head_dim
    q = t.linear(h, "q", d.heads * d.head_dim, find(p, "q_proj.weight"), find(p, "q_proj.bias"))
    k = t.linear(h, "k", kv, find(p, "k_proj.weight"), find(p, "k_proj.bias"))
    v = t.linear(h, "v", kv, find(p, "v_proj.weight"), find(p, "v_proj.bias"))
    if kind.qk_norm:
        q = _per_head_norm(t, kind, q, "q_norm", find(p, "q_norm.weight"), d.head_dim)
        k = _per_head_norm(t, kind, k, "k_norm", find(p, "k_norm.weight"), d.head_dim)
    q, k = t.rotary(q, "q_rot"), t.rotary(k, "k_rot")
    if t.kv_cache:  # DynamicCache copies k and v; attention reads the copies
        k = t.cache_copy(k, "k_cache", t.t[k].elem)
        v = t.cache_copy(v, "v_cache", t.t[k].elem if t.kv_values_follow_keys else t.t[v].elem)
    if kind.attention == "masked":
        a = masked_attention(t, q, k, v, "attn", d, batch, seq)
    elif kind.attention == "softcap":
        a = softcap_attention(t, q, k, v, "attn", d, batch, seq)
    else:
        a = t.attention(q, k, v, "attn", batch=batch, heads=d.heads, kv_heads=d.kv_heads, seq=seq,
                        head_dim=d.head_dim)
    o = t.linear(a, "o", hidden, find(p, "o_proj.weight"), find(p, "o_proj.bias"))
    if kind.gemma:
        o = _norm_op(t, kind, o, "post_attn_norm", find(p, "post_attention_layernorm.weight"))
    r = t.add(x, o, "res1")
    pre = "pre_feedforward_layernorm.weight" if kind.gemma else "post_attention_layernorm.weight"
    h2 = _norm_op(t, kind, r, "norm2", find(p, pre))
    gate = t.linear(h2, "gate", inter, find(p, "gate_proj.weight"), find(p, "gate_proj.bias"))
    up = t.linear(h2, "up", inter, find(p, "up_proj.weight"), find(p, "up_proj.bias"))
    m = t.mul(t.act(kind.act, gate, "act"), up, "glu")
    down = t.linear(m, "down", hidden, find(p, "down_proj.weight"), find(p, "down_proj.bias"))
    if kind.gemma:
        down = _norm_op(t, kind, down, "post_ffn_norm", find(p, "post_feedforward_layernorm.weight"))
    return t.add(r, down, "out")
