"""The image path of Mistral 3: Pixtral's one block-diagonal sequence of all the batch's patches and
the projector's patch merger."""

from __future__ import annotations

from freezelab.memory.activations import Tape
from freezelab.memory.cuda_facts import rounded
from freezelab.memory.image_paths.common import (
    embeddings,
    layers,
    pixel_elem,
    projector_rel,
    tower_params,
    vision_heads,
    width_of,
)
from freezelab.memory.stages import PROJECTOR, VISION, Flow, Stage
from freezelab.memory.structure import layer_params


# -- Mistral 3 (Pixtral) -----------------------------------------------------------------------

def _patches(f: Flow) -> int:
    """Patches of every image of the batch (each image at its resized size)."""
    return f.batch * sum(lay.grid[0] * lay.grid[1] for lay in f.layouts)


def pixtral_vision(f: Flow, stages: list[Stage]) -> tuple[bool, int, int]:
    """PixtralVisionModel: the conv over the padded batch, every image's patches cut out and concatenated
    into one sequence (a copy), ln_pre, 2D RoPE (cos / sin in the model dtype), and a block-diagonal
    mask (seq x seq in the model dtype) that keeps images apart: attention over one sequence of all
    the batch's patches, which the memory-efficient kernel saves with the mask for its backward."""
    _, rel = tower_params(f)
    hidden = width_of(f)
    rows = _patches(f)
    h = vision_heads(f.index.config, hidden)
    height = max(lay.resized[0] for lay in f.layouts)
    width = max(lay.resized[1] for lay in f.layouts)
    patch = int((f.index.config.get("vision_config") or {}).get("patch_size") or 14)
    padded = f.batch * len(f.layouts) * (height // patch) * (width // patch)
    flow = embeddings(f, stages, rel, padded, hidden, "patch_conv.")
    t = f.tape()
    x = t.input("conv", padded * hidden, f.num.stream, flow, hidden)
    x = t.new("sequence", rows * hidden, f.num.stream, flow, hidden)
    t.rms_norm(x, "ln_pre", rel.get("ln_pre.weight"))
    # the mask and cos / sin: saved by every layer's attention when a gradient flows through the tower
    shared = rounded(rows * rows * f.num.compute) + 2 * rounded(rows * h.head_dim * f.num.compute)
    flow = flow or f.trainable(rel.get("ln_pre.weight"))
    tower = [i for p in layer_params(f.index, "vision") for i in p.values()]
    saves = flow or any(f.mask[i] for i in tower)
    stages.append(Stage("vision.ln_pre", VISION, t.kept + (shared if saves else 0),
                        t.fwd_extra + (0 if saves else shared), t.bwd_extra,
                        [i for n, i in rel.items() if n.startswith("ln_pre.")], out_grad=flow, cost=t.cost))
    flow = layers(f, stages, flow, rows, hidden, ((1, rows),), rotary=True)
    stages.append(Stage("vision.post", VISION, held=rounded(rows * hidden * f.num.stream), dead=True))
    return flow, rows, hidden


def pixtral_projector(f: Flow, stages: list[Stage], feature_grad: bool, rows: int, width: int) -> bool:
    """Mistral3MultiModalProjector: RMSNorm, the patch merger (each image's merge x merge neighbours
    unfolded side by side and concatenated: a copy) and its Linear, then Linear, GELU, Linear."""
    merge = int(f.index.config.get("spatial_merge_size") or 2)
    rel = projector_rel(f)
    t = f.tape()
    x = t.input("features", rows * width, f.num.stream, feature_grad, width)
    x = _mlp_chain_after_norm(t, f, rel, x, merge * merge)
    stages.append(Stage("projector", PROJECTOR, t.kept, t.fwd_extra, t.bwd_extra, list(rel.values()),
                        held=t.nbytes(x), out_grad=t.grad(x), forward_only=t.forward_cached, cost=t.cost))
    return t.grad(x)


def _mlp_chain_after_norm(t: Tape, f: Flow, rel: dict[str, int], x: str, merge2: int) -> str:
    params = f.index.params
    norm_w = next((i for n, i in rel.items() if n.endswith("norm.weight")), None)
    x = t.rms_norm(x, "norm", norm_w)
    src = t.t[x]
    x = t.new("unfolded", src.numel, src.elem, src.grad, src.width * merge2)
    act = str(f.index.config.get("projector_hidden_act", "gelu"))
    weights = [i for n, i in rel.items() if n.endswith("weight") and len(params[i].shape) == 2]
    bias_of = {params[i].name.rsplit(".", 1)[0]: i for n, i in rel.items() if n.endswith(".bias")}
    for k, w in enumerate(weights):
        if k > 1:
            x = t.act(act, x, f"act{k}")
        x = t.linear(x, f"fc{k}", params[w].shape[0], w, bias_of.get(params[w].name.rsplit(".", 1)[0]))
    return x


def pixtral_inputs(f: Flow) -> int:
    """pixel_values padded to the batch's largest image (images, 3, H, W) and image_sizes (int64)."""
    height = max(lay.resized[0] for lay in f.layouts)
    width = max(lay.resized[1] for lay in f.layouts)
    n = f.batch * len(f.layouts)
    return rounded(n * 3 * height * width * pixel_elem(f)) + rounded(n * 2 * 8)
