"""Plain sentences on where a step's FLOPs go and why, from its `Flops`."""

from __future__ import annotations

from freezelab.compute.flops import Flops, StageFlops
from freezelab.units import flops as fmt

TOWERS = {"llm.layers.": "LLM", "vision.layers.": "vision"}
NAMES = {"vision.embeddings": "the patch embedding", "projector": "the projector", "lm_head": "lm_head"}


def _layers(stages: list[StageFlops]) -> str:
    """'28 LLM layers and 23 vision layers' (other stages by name)."""
    counts: dict[str, int] = {}
    others = []
    for s in stages:
        tower = next((t for prefix, t in TOWERS.items() if s.name.startswith(prefix)), None)
        if tower is None:
            others.append(NAMES.get(s.name, s.name))
        else:
            counts[tower] = counts.get(tower, 0) + 1
    parts = [f"{n} {tower} layer{'s' if n > 1 else ''}" for tower, n in counts.items()] + others
    text = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    return text[0].upper() + text[1:]


def _verb(stages: list[StageFlops], plural: str, singular: str) -> str:
    return singular if len(stages) == 1 else plural


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"


def explain(f: Flops) -> list[str]:
    """Why this plan's step costs what it does."""
    if not f.counted:
        return []
    if not f.backward:
        return [f"One step runs {fmt(f.counted)} of matmul FLOPs, all forward: nothing trainable is reached, so no "
                "backward runs."]
    out = [f"One step runs {fmt(f.counted)} of matmul FLOPs: forward {fmt(f.forward)}, backward {fmt(f.backward)} "
           f"({f.backward / f.forward:.2f}× the forward; training everything makes it about 2×)."]
    passing = [s for s in f.by_stage if s.split.backward_input and not s.split.backward_weight]
    if passing:
        bwd = sum(s.split.backward_input for s in passing)
        out.append(f"{_layers(passing)} {_verb(passing, 'train', 'trains')} no weights but still "
                   f"{_verb(passing, 'run', 'runs')} a backward for the input gradient "
                   f"({fmt(bwd)}, {_share(bwd, f.counted)} of the step): the gradient must pass through them to "
                   "reach what trains. Freezing saves only their weight gradients.")
    idle = [s for s in f.by_stage if not s.split.backward and not s.dead]
    if idle:
        out.append(f"{_layers(idle)} {_verb(idle, 'run', 'runs')} forward only: nothing before "
                   f"{_verb(idle, 'them', 'it')} trains, so the backward stops before it gets there.")
    dead = [s for s in f.by_stage if s.dead]
    if dead:
        out.append(f"{_layers(dead)} after the one the projector reads {_verb(dead, 'run', 'runs')} forward only: "
                   "no gradient reaches that far.")
    if f.split.recompute:
        out.append(f"Gradient checkpointing replays each layer's forward (up to its last Linear) during the "
                   f"backward: {fmt(f.split.recompute)} more ({_share(f.split.recompute, f.counted)}).")
    return out
