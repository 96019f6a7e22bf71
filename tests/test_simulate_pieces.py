"""Pieces of the simulated step on hand-made inputs: DDP, ZeRO-1 and offload on the log, bad input."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from freezelab.errors import FreezelabError, SimulationCancelled, SimulationError
from freezelab.memory.result import Category, Phase
from freezelab.memory.simulate import sharding
from freezelab.memory.simulate.run import Run
from freezelab.workload import Workload

G = Category.GRADIENTS
S, T = Category.OPTIMIZER_STATE, Category.OPTIMIZER_TEMP


class Layer(GradientCheckpointingLayer):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, out, bias=False, dtype=torch.bfloat16)


class Tiny(torch.nn.Module):
    """Root unit: embedding (1600 bf16 = 3200 B -> 3584) and head (same); layers of 1024 B and 2048 B."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(100, 16, dtype=torch.bfloat16)
        self.layers = torch.nn.ModuleList([Layer(32), Layer(64)])
        self.head = torch.nn.Linear(16, 100, bias=False, dtype=torch.bfloat16)
        self.emb.requires_grad_(False)
        self.layers[1].requires_grad_(False)   # trainable: layer 0 (1024 B) and the head (3584 B)


@pytest.mark.parametrize("w,scale", [
    (Workload(gpus=2, sharding="zero1"), {S: 0.5, T: 0.5}),
    (Workload(offload_optimizer=True), {S: 0.0, T: 0.0}),
    (Workload(gpus=2, sharding="zero1", offload_optimizer=True), {S: 0.0, T: 0.0}),
    (Workload(gpus=2, sharding="ddp"), {}),
    (Workload(gpus=1, sharding="zero3"), {}),
])
def test_what_each_strategy_scales(w: Workload, scale: dict) -> None:
    plan = sharding.plan(Tiny(), w)
    assert plan.scale == scale
    if w.sharding == "ddp" and w.gpus > 1:   # buckets: one more copy of the trainable gradients
        assert plan.extra(Phase.BACKWARD) == {G: 1024 + 3584}
    else:
        assert plan.extra is None
    assert plan.applies == bool(scale or plan.extra)


@pytest.mark.parametrize("sharding_mode", ["zero2", "zero3", "fsdp"])
def test_a_step_that_ran_through_fsdp2_only_gets_its_offload_applied(sharding_mode: str) -> None:
    assert not sharding.plan(Tiny(), Workload(gpus=4, sharding=sharding_mode), ran_sharded=True).applies
    off = sharding.plan(Tiny(), Workload(gpus=4, sharding=sharding_mode, offload_optimizer=True), ran_sharded=True)
    assert off.scale == {S: 0.0, T: 0.0} and off.extra is None


def test_bad_input_is_a_freezelab_error() -> None:
    from transformers import LlamaConfig

    with pytest.raises(SimulationError, match="not a vision-language model transformers builds"):
        Run(LlamaConfig(), set(), Workload())
    with pytest.raises(SimulationError, match="must be a freezelab.workload.Workload"):
        Run(LlamaConfig(), set(), {"batch": 1})
    assert issubclass(SimulationError, FreezelabError) and issubclass(SimulationCancelled, FreezelabError)


def test_integer_bookkeeping_runs_for_real_and_large_results_stay_fake() -> None:
    import torch

    from freezelab.memory.fake.concrete import MAX_REAL_BYTES, known_mask_indices, runs_for_real

    aten = torch.ops.aten
    grid = torch.tensor([[1, 8, 8]])
    assert runs_for_real(aten.prod.dim_int, (grid, -1), {})                       # a Qwen grid: read by .tolist()
    assert runs_for_real(aten.arange.default, (16,), {})                           # an integer factory
    assert not runs_for_real(aten.empty.memory_format, ((4, 4),), {"dtype": torch.float32})  # float: fake
    side = int(MAX_REAL_BYTES ** 0.5) + 1                                           # a b x s x s mask: shape only
    assert not runs_for_real(aten.ones.default, ((side, side),), {"dtype": torch.bool})
    mask = torch.tensor([True, False, True])
    args = known_mask_indices(aten.index.Tensor, (torch.zeros(3, 2), [mask]))
    assert args[1][0].tolist() == [0, 2]                                           # the positions it selects


def test_a_batch_beyond_real_memory_is_refused_before_it_is_built() -> None:
    from freezelab.families import config_from_dict
    from freezelab.memory.simulate import simulate_step
    from freezelab.memory.simulate.batch import MAX_REAL_TOKENS
    from tiny_configs import config as tiny_config

    w = Workload(batch=4096, text_tokens=MAX_REAL_TOKENS // 4096 + 1, images=0)
    with pytest.raises(SimulationError, match="tokens; at most"):
        simulate_step(config_from_dict(tiny_config("llava")), [], w)
