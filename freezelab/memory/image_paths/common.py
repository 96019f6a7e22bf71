"""What the image paths of the families beyond LLaVA share: the tower's width and heads, its layer
stages, the embedding and norm stages, the projector's parameters and a projector's MLP chain."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from math import prod
from typing import Any

from freezelab.compute import cost as costs
from freezelab.compute.cost import Cost
from freezelab.memory.activations import Tape
from freezelab.memory.blocks import Groups, Heads, find, vision_block
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.stages import VISION, Flow, Stage, layer_stage
from freezelab.memory.structure import layer_params, relative

INDEX_ELEM = 8


def vision_heads(config: dict[str, Any], hidden: int) -> Heads:
    vision = config.get("vision_config") or {}
    heads = int(vision.get("num_attention_heads") or vision.get("num_heads") or 1)
    head_dim = int(vision.get("head_dim") or hidden // heads)
    return Heads(heads, heads, head_dim, str(vision.get("hidden_act", "gelu")))


def tower_params(f: Flow) -> tuple[str, dict[str, int]]:
    root = f.index.roots["vision"][0]
    return root, relative(f.index, root)


def width_of(f: Flow) -> int:
    """The tower's hidden width: its first layer's most common 1-D parameter size."""
    first = layer_params(f.index, "vision")[0]
    sizes = [f.index.params[i].shape[0] for i in first.values() if len(f.index.params[i].shape) == 1]
    return max(set(sizes), key=sizes.count)


def layers(f: Flow, stages: list[Stage], flow: bool, rows: int, hidden: int, groups: Groups,
            rotary: bool = False) -> bool:
    """Every vision layer as one stage (identical layers computed once); returns whether the last
    one's output requires grad."""
    h = vision_heads(f.index.config, hidden)
    recipe = block_recipe(groups, rotary)
    cache: dict[tuple[Any, ...], Stage] = {}
    for i, p in enumerate(layer_params(f.index, "vision")):
        fc1 = find(p, "fc1.weight", "linear_fc1.weight", "gate_proj.weight")
        inter = f.index.params[fc1].shape[0] if fc1 is not None else 4 * hidden
        st = layer_stage(f, recipe, f"vision.layers.{i}", VISION, p, flow, rows, hidden, inter, h, 0, 0, cache)
        st.grad_params = list(p.values())
        flow = st.out_grad
        stages.append(st)
    return flow


@lru_cache(maxsize=256)
def block_recipe(groups: Groups, rotary: bool, split: bool = False) -> Callable[..., str]:
    """One recipe object per kind of block: freezelab.memory.layer_memo keys layer stages by it."""
    return partial(block, groups=groups, rotary=rotary, split=split)


def block(t: Tape, p: dict[str, int], x: str, hidden: int, inter: int, h: Heads, batch: int, seq: int, *,
           groups: Groups, rotary: bool, split: bool = False) -> str:
    return vision_block(t, p, x, hidden, inter, h, groups, rotary, split)


def embeddings(f: Flow, stages: list[Stage], rel: dict[str, int], rows: int, hidden: int, prefix: str,
               positions: int | None = None, hooked: bool = True) -> bool:
    """Patch (and position) embeddings: the conv saves only the (resident) pixels; transformers' input
    hook marks its output as requiring grad (`hooked`: the tower exposes input embeddings for the hook).
    `positions`: the conv's output positions (default `rows`)."""
    params = [i for n, i in rel.items() if n.startswith(prefix)]
    flow = (f.hooks and hooked) or any(f.mask[i] for i in params)
    cost = patch_cost(f, params, rows if positions is None else positions)
    stages.append(Stage("vision.embeddings", VISION, grad_params=params, out_grad=flow,
                        fwd_extra=3 * rounded(rows * hidden * f.num.stream),
                        cost=cost + costs.traffic(5 * f.num.stream * rows * hidden, backward=flow)))
    return flow


def patch_cost(f: Flow, params: list[int], positions: int) -> Cost:
    """The patch convolution (Conv2d, or Qwen's Conv3d over frame pairs) as FlopCounterMode counts it:
    2 x output positions x the kernel's c_in·k·k(·t) x c_out. Pixels never require grad; the weight's
    gradient is made when it trains."""
    weight = next((i for i in params if len(f.index.params[i].shape) >= 4), None)  # (c_out, c_in, [t,] k, k)
    if weight is None:
        return Cost()
    shape = f.index.params[weight].shape
    return costs.matmul(positions, prod(shape[1:]), shape[0], input_grad=False, weight_grad=f.trainable(weight))


def norm_stage(f: Flow, stages: list[Stage], rel: dict[str, int], name: str, flow: bool, rows: int,
                hidden: int) -> bool:
    weight, bias = rel.get(f"{name}.weight"), rel.get(f"{name}.bias")
    if weight is None:
        return flow
    t = f.tape()
    x = t.input("x", rows * hidden, f.num.stream, flow, hidden)
    y = t.layer_norm(x, name, weight, bias) if bias is not None else t.rms_norm(x, name, weight)
    stages.append(Stage(f"vision.{name}", VISION, t.kept, t.fwd_extra, t.bwd_extra,
                        [i for i in (weight, bias) if i is not None], out_grad=t.grad(y), cost=t.cost))
    return t.grad(y)


def projector_rel(f: Flow) -> dict[str, int]:
    out: dict[str, int] = {}
    for root in f.index.roots.get("projector", []):
        if root in f.index.module_by_path:
            out.update({f"{root}.{k}": v for k, v in relative(f.index, root).items()})
        elif root in f.index.by_name:
            out[root] = f.index.by_name[root]
    return out


def pixel_elem(f: Flow) -> int:
    return 2 if f.num.autocast else f.num.param  # measure.py sends bf16 pixels under autocast


def mlp_chain(t: Tape, f: Flow, rel: dict[str, int], x: str) -> str:
    """A projector's norm (if any), then its Linear layers in order with the projector activation between."""
    params = f.index.params
    weights = [i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 2]
    bias_of = {params[i].name.rsplit(".", 1)[0]: i for n, i in rel.items() if n.endswith(".bias")}
    norm_w = next((i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 1), None)
    if norm_w is not None:
        norm_b = bias_of.get(params[norm_w].name.rsplit(".", 1)[0])
        x = t.layer_norm(x, "norm", norm_w, norm_b) if norm_b is not None else t.rms_norm(x, "norm", norm_w)
    act = str(f.index.config.get("projector_hidden_act", "gelu"))
    for k, w in enumerate(weights):
        if k:
            x = t.act(act, x, f"act{k}")
        x = t.linear(x, f"fc{k}", params[w].shape[0], w, bias_of.get(params[w].name.rsplit(".", 1)[0]))
    return x
