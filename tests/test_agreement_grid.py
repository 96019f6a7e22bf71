"""The analytic and the simulated estimate against each other over the workload grid, on two tiny models:
the CLIP + Llama one (grouped-query attention, untied) and a SigLIP + Qwen2 one (grouped-query attention,
q/k/v biases, tied embeddings, like the shipped 0.5B configs). The full cross product is 1,792 cells per
model (python benchmarks/agreement_grid.py --cells full); the tests run the pairwise subset, in which every
pair of values of any two axes appears (66 cells)."""

from __future__ import annotations

import itertools

import pytest
from tiny_configs import write

from freezelab.memory.agreement import TOLERANCE, compare, grid, numerics, pairwise, plans
from freezelab.models import hf_config, index_of
from freezelab.sources import resolve
from freezelab.workload import Attention, Autocast, Dtype, Optimizer

SHAPE = {"batch": 4, "text_tokens": 256}   # activations over the few KiB of biases and norms


def test_the_grid_is_the_full_cross_product_of_valid_workloads() -> None:
    assert numerics() == [(Dtype.BF16, Autocast.NONE), (Dtype.BF16, Autocast.BF16), (Dtype.FP16, Autocast.NONE),
                          (Dtype.FP16, Autocast.FP16), (Dtype.FP32, Autocast.NONE), (Dtype.FP32, Autocast.BF16),
                          (Dtype.FP32, Autocast.FP16)]
    assert plans(2) == ["stage1", "stage2", "full", "llm", "vision-projector", "last-2", "lm-head", "frozen"]
    cells = grid(2)
    assert len(cells) == 7 * 8 * 2 * len(Optimizer) * len(Attention) == 1792 == len(set(cells))


def test_the_pairwise_subset_covers_every_pair_of_values() -> None:
    cells = grid(2)
    chosen = pairwise(cells)
    assert len(chosen) == 66 and set(chosen) <= set(cells)

    def values(c):
        return ((c.dtype, c.autocast), c.plan, c.grad_ckpt, c.optimizer, c.attn)

    for i, j in itertools.combinations(range(5), 2):
        wanted = {(values(c)[i], values(c)[j]) for c in cells}
        assert wanted == {(values(c)[i], values(c)[j]) for c in chosen}


@pytest.mark.parametrize("kind", ["tiny", "qwen-tied"])
def test_analytic_and_simulated_agree_on_every_pairwise_cell(kind: str, tmp_path) -> None:
    source = resolve("tiny") if kind == "tiny" else resolve(str(write(tmp_path, kind)))
    config = hf_config(source)
    indexes = {d: index_of(source, dtype=d) for d in Dtype}
    results = [compare(indexes, config, c, last_n=2, **SHAPE) for c in pairwise(grid(2))]
    assert all(r.workspaces_agree for r in results), [r.describe() for r in results if not r.workspaces_agree]
    worst = max(results, key=lambda r: abs(r.error))
    assert abs(worst.error) <= TOLERANCE, f"worst cell: {worst.describe()}"
