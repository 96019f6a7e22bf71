"""What the ops of a training step cost in compute: matmul-class FLOPs and the bytes that
bandwidth-bound ops move.

FLOPs are counted as `torch.utils.flop_counter.FlopCounterMode` counts them (torch 2.13,
torch/utils/flop_counter.py), so that the analytic count and the count taken on the
simulated step can agree exactly:

* a matmul (mm, addmm, bmm, baddbmm) of (m x k) by (k x n): 2·m·k·n; a bias is not counted;
* a convolution: 2 x output positions x kernel size x c_in x c_out; its backward counts the
  input and the weight gradient each like the forward, only those asked for;
* fused attention (flash, memory-efficient, cuDNN): 4·b·h·s²·d forward (q·kᵀ and p·v over the
  whole s x s square, even when causal) and 10·b·h·s²·d backward (the scores recomputed and four
  gradient products) whatever the backward needs;
* eager (and the math fallback of SDPA) attention runs as bmm: 4·b·h·s²·d forward; its backward
  runs only the products whose inputs need a gradient.

Not counted, as FlopCounterMode does not count them: elementwise ops, norms, softmax, casts,
reductions, embedding lookups, the loss and the optimizer step. Their cost is memory traffic:
each op records the bytes its eager (unfused) implementation reads and writes in the forward,
and its backward is taken to move twice as much (it reads the output gradient and what the op
saved, and writes the input gradients).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

FUSED_ATTENTION_FORWARD = 4    # x b·h·s²·d: q·kᵀ and p·v
FUSED_ATTENTION_BACKWARD = 10  # x b·h·s²·d: q·kᵀ again, dp = dO·vᵀ, dV = pᵀ·dO, dQ = dS·k, dK = dSᵀ·q
BACKWARD_TRAFFIC = 2           # backward bytes per forward byte of a bandwidth-bound op


@dataclass(frozen=True)
class Cost:
    """FLOPs (FlopCounterMode's kind) and bandwidth-bound bytes of some ops of one training step."""

    forward: int = 0            # FLOPs of the forward
    backward_input: int = 0     # FLOPs of the backward that make gradients of activations
    backward_weight: int = 0    # FLOPs of the backward that make gradients of weights
    attention_forward: int = 0  # of the forward, the attention products (s x s scores)
    attention_backward: int = 0  # of backward_input, the attention products
    forward_bytes: int = 0      # bytes moved by bandwidth-bound ops in the forward
    backward_bytes: int = 0     # ... in the backward

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Cost)))

    def scaled(self, n: int) -> Cost:
        return Cost(*(getattr(self, f.name) * n for f in fields(Cost)))

    @property
    def backward(self) -> int:
        return self.backward_input + self.backward_weight

    @property
    def total(self) -> int:
        return self.forward + self.backward

    @property
    def attention(self) -> int:
        return self.attention_forward + self.attention_backward

    def forward_only(self) -> Cost:
        """The forward of these ops again (a checkpointed layer's recompute)."""
        return Cost(forward=self.forward, attention_forward=self.attention_forward,
                    forward_bytes=self.forward_bytes)


def matmul(m: int, k: int, n: int, *, input_grad: bool, weight_grad: bool) -> Cost:
    """x (m x k) @ W (k x n): a Linear or a convolution unrolled the same way. The backward makes
    the input's gradient when the input requires grad and the weight's when the weight trains."""
    f = 2 * m * k * n
    return Cost(forward=f, backward_input=f if input_grad else 0, backward_weight=f if weight_grad else 0)


def fused_attention(batch: int, heads: int, seq: int, head_dim: int, *, backward: bool) -> Cost:
    """One fused SDPA call over `batch` sequences; its backward runs when q, k or v requires grad."""
    unit = batch * heads * seq * seq * head_dim
    fwd = FUSED_ATTENTION_FORWARD * unit
    bwd = FUSED_ATTENTION_BACKWARD * unit if backward else 0
    return Cost(forward=fwd, backward_input=bwd, attention_forward=fwd, attention_backward=bwd)


def eager_attention(batch: int, heads: int, seq: int, head_dim: int, *, q_grad: bool, k_grad: bool,
                    v_grad: bool) -> Cost:
    """scores = q @ kᵀ and out = softmax(scores) @ v as bmm over every query head (k and v repeated
    for GQA). The backward: dP = dO @ vᵀ when the scores need a gradient, dV = Pᵀ @ dO when v does,
    dQ = dS @ k and dK = dSᵀ @ q for whichever of q and k requires grad."""
    unit = 2 * batch * heads * seq * seq * head_dim
    scores_grad = q_grad or k_grad
    bwd = unit * (int(scores_grad) + int(v_grad) + int(q_grad) + int(k_grad))
    return Cost(forward=2 * unit, backward_input=bwd, attention_forward=2 * unit, attention_backward=bwd)


def traffic(forward_bytes: int, *, backward: bool) -> Cost:
    """A bandwidth-bound op that moves `forward_bytes` in the forward (and twice that in its
    backward when a gradient flows through it)."""
    return Cost(forward_bytes=forward_bytes, backward_bytes=BACKWARD_TRAFFIC * forward_bytes if backward else 0)


# Bytes per element moved by the forward of HF's eager implementations, `e` the element size:
def rms_norm_bytes(e: int) -> int:
    """LlamaRMSNorm: upcast (e + 4), pow (8), mean (4), multiply by rsqrt (8), downcast (4 + e),
    multiply by the weight (2e)."""
    return 4 * e + 28


def rotary_bytes(e: int) -> int:
    """q * cos (3e), rotate_half: two slices negated and concatenated (4e), * sin (3e), the sum (3e)."""
    return 13 * e


def eager_softmax_bytes(c: int) -> int:
    """Per score: the scaling (2c), the mask added (3c), softmax in fp32 (c + 4 upcast, 8), back to
    the compute dtype (4 + c)."""
    return 7 * c + 16


def loss_bytes(e: int) -> int:
    """Per logit: `.float()` (e + 4, none for fp32 logits), log_softmax (reads twice, writes once: 12)."""
    return (e + 4 if e != 4 else 0) + 12
