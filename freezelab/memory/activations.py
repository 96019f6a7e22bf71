"""What autograd keeps: a tiny symbolic tape of one stage's forward.

Each op records, from PyTorch's derivative formulas, which tensors its
backward needs given which of its inputs require grad and which of its
parameters train:

* a Linear saves its input only when its weight trains (for grad_weight) and
  needs its weight (already resident) when its input requires grad; under
  autocast the 16-bit weight copy it uses is what gets saved;
* RMSNorm (Llama/Mistral/Qwen2) saves the fp32 upcast of its input and the
  rsqrt when the input needs a gradient, and the normalised input when its
  weight trains; LayerNorm saves input, mean and rstd whenever anything in it
  needs a gradient;
* GELU/SiLU save their input; QuickGELU also its sigmoid; a product saves each
  factor the other one's gradient needs;
* fused SDPA saves q, k, v, the output and the log-sum-exp; eager attention
  saves the fp32 softmax and its 16-bit copy (s^2 per head).

Tensors are named, so a tensor saved by several ops counts once, and the
weights themselves never count (they are resident anyway). The tape also
tracks the largest transient of the forward (outputs not kept) and of the
backward (gradient buffers alive at once) of the stage, and what each op costs
in compute (`freezelab.compute.cost`: FLOPs split by forward, input and weight
gradients, and the bytes bandwidth-bound ops move).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freezelab.compute import cost as costs
from freezelab.compute.cost import Cost
from freezelab.memory.adapter_ops import AdapterSpec, base_linear, lora_linear
from freezelab.memory.cuda_facts import rounded


@dataclass(frozen=True)
class Numerics:
    """Element sizes of one training step."""

    param: int        # bytes per parameter (and gradient, and AdamW state) element
    compute: int      # bytes of matmul / attention outputs: 2 under autocast or with 16-bit params
    autocast: bool    # fp32 parameters with 16-bit matmuls
    eager: bool       # eager attention (materialised s x s probabilities) instead of fused SDPA
    fp32_ops: bool = False  # autocast is on (any parameter dtype): its fp32 ops (layer_norm) run in fp32

    @property
    def stream(self) -> int:
        """The residual stream stays in the parameter dtype (fp32 embeddings under autocast)."""
        return self.param


@dataclass
class Tensor:
    numel: int
    elem: int
    grad: bool
    width: int = 1   # last dimension: numel // width rows

    @property
    def rows(self) -> int:
        return self.numel // max(1, self.width)

    @property
    def nbytes(self) -> int:
        return rounded(self.numel * self.elem)


class Tape:
    """Records one stage's forward ops and what their backward keeps."""

    def __init__(self, num: Numerics, trainable: Callable[[int | None], bool],
                 numel: Callable[[int], int], spec: AdapterSpec | None = None) -> None:
        self.num = num
        self.spec = spec if spec is not None else AdapterSpec()
        # adapter tensors (handles ("A" | "B", base weight)) always train; numels from the adapted layer
        self.trainable = lambda w: True if isinstance(w, tuple) else trainable(w)
        self.param_numel = lambda w: self._adapter_numel(w) if isinstance(w, tuple) else numel(w)
        self.dora_extra = 0                   # DoRA's weight-norm transients, also in a checkpoint's recompute
        self.dora_fwd = 0                     # ... with all the layer saved before them (a forward's peak)
        self.t: dict[str, Tensor] = {}
        self.saved: set[str] = set()
        self.forward_only: set[str] = set()   # alive until the forward ends (autocast's weight cache)
        self.fwd_extra = 0
        self.bwd_extra = 0
        self._ops = 0
        self.kv_cache = False                 # decoder layers copy k / v into a DynamicCache
        self.kv_values_follow_keys = False    # ... with the values in the keys' dtype
        self.cost = Cost()                    # FLOPs and bytes of the ops recorded so far
        # What a checkpoint replay of these ops recomputes: non-reentrant checkpointing stops early,
        # once the last tensor saved for backward is repacked, and a matmul saves its inputs before
        # it runs, so the replay ends just before the last op that saves (a layer's last Linear).
        self.replay = Cost()

    # -- bookkeeping -----------------------------------------------------------
    def input(self, name: str, numel: int, elem: int, grad: bool, width: int) -> str:
        self.t[name] = Tensor(numel, elem, grad, width)
        return name

    def _new(self, name: str, numel: int, elem: int, grad: bool, width: int = 1) -> str:
        self._ops += 1
        self.t[name] = Tensor(numel, elem, grad, width)
        return name

    def _save(self, *names: str) -> None:
        self.saved.update(names)

    def _fwd(self, nbytes: int) -> None:
        self.fwd_extra = max(self.fwd_extra, nbytes)

    def _bwd(self, nbytes: int) -> None:
        self.bwd_extra = max(self.bwd_extra, nbytes)

    def _weight_norm(self, held: int, transient: int) -> None:
        """DoRA's weight-norm transients (`held`), met by the layer's unsaved tensors (`transient` in all)."""
        self._fwd(transient)

    def _charge(self, cost: Cost) -> None:
        self.cost = self.cost + cost

    def _moves(self, per_element: int, numel: int, backward: bool) -> None:
        self._charge(costs.traffic(per_element * numel, backward=backward))

    def _replayed(self, saves: bool) -> None:
        """An op that saves tensors for backward: a checkpoint replay runs up to here at least."""
        if saves:
            self.replay = self.cost.forward_only()

    def grad(self, name: str) -> bool:
        return self.t[name].grad

    def nbytes(self, name: str) -> int:
        return self.t[name].nbytes

    @property
    def kept(self) -> int:
        return sum(self.t[n].nbytes for n in self.saved)

    @property
    def forward_cached(self) -> int:
        """Autocast's cached weight copies beyond what the stage saves; `autocast_cached`: all of them."""
        return sum(self.t[n].nbytes for n in self.forward_only - self.saved)

    @property
    def autocast_cached(self) -> int:
        return sum(self.t[n].nbytes for n in self.forward_only)

    def _grad_bytes(self, *names: str) -> int:
        return sum(self.t[n].nbytes for n in names if self.t[n].grad)

    def _adapter_numel(self, handle: Any) -> int:
        role, weight = handle
        layer = self.spec.layers[weight]
        return layer.r * (layer.linear.in_features if role == "A" else layer.linear.out_features)

    # -- ops ---------------------------------------------------------------------
    def _to16(self, x: str) -> str:
        """Autocast's 16-bit copy of a matmul input (made per call: only leaf weights are cached)."""
        if not self.num.fp32_ops or self.t[x].elem == 2:
            return x
        src = self.t[x]
        self._moves(6, src.numel, src.grad)  # read fp32, write 16-bit
        return self._new(f"{x}>16#{self._ops}", src.numel, 2, src.grad, src.width)

    def linear(self, x: str, out: str, out_features: int, weight: int | None, bias: int | None = None) -> str:
        """nn.Linear, or PEFT's LoRA / DoRA layer around it, or a quantized one (freezelab.memory.adapter_ops)."""
        if weight is not None and weight in self.spec.layers:
            return lora_linear(self, x, out, out_features, weight, bias, self.spec)
        if weight is not None and weight in self.spec.quantized:
            return base_linear(self, x, out, out_features, weight, bias, self.spec)
        return self.plain_linear(x, out, out_features, weight, bias)

    def plain_linear(self, x: str, out: str, out_features: int, weight: Any, bias: int | None = None,
                     elem: int | None = None) -> str:
        """nn.Linear; `elem`: the output's element size when it is not the step's compute dtype."""
        src = self.t[x]
        flow, w_train, b_train = src.grad, self.trainable(weight), self.trainable(bias)
        xin = self._to16(x)
        self._replayed(flow or w_train)  # saves its input and / or weight before it runs
        if w_train:
            self._save(xin)  # grad_weight = grad_out^T @ input
        if self.num.autocast and weight is not None and (flow or w_train):
            # grad_input needs the weight: under autocast that is its 16-bit copy (made fresh for
            # frozen weights), kept until this backward; autocast caches a trainable weight's copy
            # until the forward ends, saved or not (a checkpointed layer saves nothing)
            w16 = self._new(f"w16:{weight}", self.param_numel(weight), 2, w_train)
            self._moves(6, self.param_numel(weight), False)
            if flow:
                self._save(w16)
            if w_train:
                self.forward_only.add(w16)
        y = self._new(out, src.rows * out_features, elem or self.num.compute, flow or w_train or b_train,
                      out_features)
        self._charge(costs.matmul(src.rows, src.width, out_features, input_grad=flow, weight_grad=w_train))
        cast = self.nbytes(xin) if xin != x and xin not in self.saved else 0
        self._fwd(self.nbytes(y) + cast)
        self._bwd(self._grad_bytes(y) + (src.nbytes if flow else 0))
        return y

    def rms_norm(self, x: str, out: str, weight: int | None) -> str:
        src = self.t[x]
        flow, w_train = src.grad, self.trainable(weight)
        fp32_bytes = rounded(src.numel * 4)
        if flow:
            # pow / mul save the fp32 upcast (the input itself when it already is fp32) and rsqrt
            x32 = x if src.elem == 4 else self._new(f"{x}>32", src.numel, 4, True, src.width)
            self._save(x32, self._new(f"{out}.rstd", src.rows, 4, True))
        if w_train:
            self._save(self._new(f"{out}.normed", src.numel, src.elem, flow, src.width))
        y = self._new(out, src.numel, src.elem, flow or w_train, src.width)
        self._moves(costs.rms_norm_bytes(src.elem), src.numel, flow or w_train)
        self._replayed(flow or w_train)
        self._fwd(2 * fp32_bytes + self.nbytes(y))
        self._bwd(self._grad_bytes(y) + (2 * fp32_bytes + src.nbytes if flow else 0))
        return y

    def layer_norm(self, x: str, out: str, weight: int | None, bias: int | None) -> str:
        src = self.t[x]
        needs = src.grad or self.trainable(weight) or self.trainable(bias)
        xin = x
        if self.num.fp32_ops and src.elem == 2:  # layer_norm runs in fp32 under autocast, 16-bit weights too
            xin = self._new(f"{x}>32", src.numel, 4, src.grad, src.width)
        if needs:
            self._save(xin, self._new(f"{out}.mean", src.rows, 4, False),
                       self._new(f"{out}.rstd", src.rows, 4, False))
        elem = 4 if self.num.fp32_ops else src.elem
        y = self._new(out, src.numel, elem, needs, src.width)
        self._moves(src.elem + elem + (6 if xin != x else 0), src.numel, needs)
        self._replayed(needs)
        self._fwd(self.nbytes(y) + (self.nbytes(xin) if xin != x else 0))
        self._bwd(self._grad_bytes(y) + (src.nbytes if src.grad else 0))
        return y

    def act(self, kind: str, x: str, out: str) -> str:
        src = self.t[x]
        y = self._new(out, src.numel, src.elem, src.grad, src.width)
        extra = 0
        if src.grad:
            self._save(x)
            if kind == "quick_gelu":  # x * sigmoid(1.702 x): the product saves both factors
                self._save(self._new(f"{out}.sigmoid", src.numel, src.elem, True))
        if kind == "quick_gelu":
            extra = 2 * src.nbytes  # 1.702 x and sigmoid(.) before the product
        self._moves((7 if kind == "quick_gelu" else 2) * src.elem, src.numel, src.grad)
        self._replayed(src.grad)
        self._fwd(self.nbytes(y) + extra)
        self._bwd(2 * self._grad_bytes(y))
        return y

    def mul(self, a: str, b: str, out: str) -> str:
        ta, tb = self.t[a], self.t[b]
        if tb.grad:
            self._save(a)
        if ta.grad:
            self._save(b)
        y = self._new(out, max(ta.numel, tb.numel), max(ta.elem, tb.elem), ta.grad or tb.grad, ta.width)
        self._moves(3 * self.t[y].elem, self.t[y].numel, self.t[y].grad)
        self._replayed(ta.grad or tb.grad)
        self._fwd(self.nbytes(y))
        self._bwd(self._grad_bytes(y) + self._grad_bytes(a, b))
        return y

    def add(self, a: str, b: str, out: str) -> str:
        ta, tb = self.t[a], self.t[b]
        y = self._new(out, max(ta.numel, tb.numel), max(ta.elem, tb.elem), ta.grad or tb.grad, ta.width)
        self._moves(3 * self.t[y].elem, self.t[y].numel, self.t[y].grad)
        self._fwd(self.nbytes(y))
        self._bwd(self._grad_bytes(y))
        return y

    def rotary(self, x: str, out: str) -> str:
        """q*cos + rotate_half(q)*sin: the products save only cos / sin (shared by every layer);
        under autocast cos/sin are fp32 (they follow the fp32 embeddings), so q_embed is too."""
        src = self.t[x]
        elem = 4 if self.num.autocast else src.elem
        y = self._new(out, src.numel, elem, src.grad, src.width)
        self._moves(costs.rotary_bytes(elem), src.numel, src.grad)
        self._fwd(3 * self.nbytes(y))
        self._bwd(3 * self._grad_bytes(y))
        return y

    def attention(self, q: str, k: str, v: str, out: str, *, batch: int, heads: int, kv_heads: int,
                  seq: int, head_dim: int) -> str:
        """Self-attention over `batch` sequences of `seq` tokens (causal or not: same memory)."""
        need = self.grad(q) or self.grad(k) or self.grad(v)
        fused = not self.num.eager and (self.num.compute == 2 or kv_heads == heads)
        qi, ki, vi = (self._to16(n) if self.num.compute == 2 else n for n in (q, k, v))
        y = self._new(out, batch * seq * heads * head_dim, self.num.compute, need, heads * head_dim)
        scores = batch * heads * seq * seq
        self._charge(self._attention_flops(batch, heads, kv_heads, seq, head_dim, q, k, v))
        self._replayed(need)  # saves its output (fused) or the probabilities (eager) after it runs
        if fused:
            # flash / memory-efficient kernels: q, k, v (kv heads only, GQA native), out and logsumexp
            if need:
                self._save(qi, ki, vi, y, self._new(f"{out}.lse", batch * heads * seq, 4, False))
            self._fwd(self.nbytes(y))
            self._bwd(self.nbytes(y) + self._grad_bytes(q, k, v))
            return y
        # eager (or the math fallback): k/v repeated to every head, then softmax in fp32
        rep = heads // max(1, kv_heads)
        if rep > 1:
            ki = self._new(f"{k}.rep", self.t[ki].numel * rep, self.t[ki].elem, self.grad(k))
            vi = self._new(f"{v}.rep", self.t[vi].numel * rep, self.t[vi].elem, self.grad(v))
        c = self.num.compute
        probs32 = self._new(f"{out}.probs32", scores, 4, need)
        probs = probs32 if c == 4 else self._new(f"{out}.probs", scores, c, need)
        self._moves(costs.eager_softmax_bytes(c), scores, need)
        if need:
            self._save(qi, ki, probs32, probs, vi)
        reps = self.nbytes(ki) + self.nbytes(vi) if rep > 1 and not need else 0  # alive while it runs
        self._fwd(self._scores_transient(scores, need) + reps + self._math_extra(qi, ki, scores, seq, need))
        # backward: probs @ v gives the probabilities' and v's gradients and lets go of the output's
        # gradient and the 16-bit probabilities; softmax's backward then holds two more fp32 s x s
        # tensors beside its saved output (the gradient upcast to fp32 and its own result); q's and
        # k's gradients come after
        score_bytes = rounded(scores * c)
        probs_grad = 2 * rounded(scores * 4) - (score_bytes if probs is not probs32 else 0)
        v_grad = self.nbytes(vi) if self.grad(v) else 0
        self._bwd(max(probs_grad + v_grad, self.nbytes(y) + self._grad_bytes(q, k, v)))
        return y

    def _scores_transient(self, scores: int, need: bool) -> int:
        """The s x s tensors alive at once around the softmax (the output comes after them)."""
        c, fp32 = self.num.compute, rounded(scores * 4)
        if need or c == 4:
            return 2 * rounded(scores * c)
        if self.num.param == 4:  # the fp32 mask made the scores fp32: softmax holds them and its output
            return 2 * fp32
        # nothing saved: softmax(dtype=float32) holds its 16-bit input, its fp32 copy and its fp32 output
        return rounded(scores * c) + 2 * fp32

    def _math_extra(self, qi: str, ki: str, scores: int, seq: int, need: bool) -> int:
        """The math kernel (aten/src/ATen/native/transformers/attention.cpp): its causal mask (a boolean
        and an additive s x s), q * sqrt(scale) into a new tensor beside the original (and
        k^T * sqrt(scale), which its matmul saves when anything needs a gradient), and _safe_softmax:
        softmax, then where(all -inf rows, 0, .), into new tensors beside a boolean mask of the scores.
        Eager attention has none of these."""
        if self.num.eager:
            return 0
        c = self.num.compute
        mask = rounded(seq * seq) + rounded(seq * seq * c)
        return mask + rounded(scores * c) + rounded(scores) + self.nbytes(qi) + (self.nbytes(ki) if need else 0)

    def _attention_flops(self, batch: int, heads: int, kv_heads: int, seq: int, head_dim: int,
                         q: str, k: str, v: str) -> Cost:
        """The kernel CUDA's SDPA picks (`freezelab.memory.fake.sdpa`): flash for 16-bit inputs (the
        head dimension padded to a multiple of 8), the memory-efficient kernel for fp32 without
        grouped-query heads (it takes no enable_gqa: PyTorch 2.11 / 2.13 sdp_utils.cpp), else the math
        composite, which runs as bmm like eager attention (the same choice as the memory in `attention`)."""
        flash = self.num.compute == 2 and head_dim <= 256
        efficient = kv_heads == heads and head_dim % (8 if self.num.compute == 2 else 4) == 0
        if not self.num.eager and (flash or efficient):
            d = -(-head_dim // 8) * 8 if flash else head_dim
            return costs.fused_attention(batch, heads, seq, d,
                                         backward=self.grad(q) or self.grad(k) or self.grad(v))
        return costs.eager_attention(batch, heads, seq, head_dim, q_grad=self.grad(q), k_grad=self.grad(k),
                                     v_grad=self.grad(v))

    def cache_copy(self, x: str, out: str, elem: int) -> str:
        """DynamicCache.update: torch.cat onto an empty tensor, i.e. a copy the model output keeps."""
        src = self.t[x]
        y = self._new(out, src.numel, elem, src.grad, src.width)
        self._moves(src.elem + elem, src.numel, False)
        self._fwd(self.nbytes(y))
        return y

    def new(self, name: str, numel: int, elem: int, grad: bool, width: int) -> str:
        """A fresh tensor made by an op that saves nothing (cat, masked_scatter, packing)."""
        y = self._new(name, numel, elem, grad, width)
        self._moves(2 * elem, numel, grad)
        self._fwd(self.nbytes(y))
        self._bwd(2 * self._grad_bytes(y))
        return y
