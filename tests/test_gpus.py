"""CUDA facts and the per-card device figures of the fits table, on hand-made estimates."""

from __future__ import annotations

import pytest

from freezelab.memory.cuda_facts import Arch, cublas_workspace, rounded
from freezelab.memory.gpus import GPUS, device_bytes_on, fits_table
from freezelab.memory.result import MemoryEstimate, Method, Phase

MiB = 2**20
GiB = 2**30


def test_block_rounding() -> None:
    assert [rounded(n) for n in (-5, 0, 1, 512, 513, 4000)] == [0, 0, 512, 512, 1024, 4096]


def test_cublas_workspace_per_architecture() -> None:
    # PyTorch's default CUBLAS_WORKSPACE_CONFIG: ":4096:8" on sm90, ":4096:2:16:8" elsewhere
    assert cublas_workspace(Arch.SM90) == 32 * MiB
    assert [cublas_workspace(a) for a in (Arch.SM80, Arch.SM86, Arch.SM89)] == [8 * MiB + 128 * 1024] * 3
    with pytest.raises(ValueError):
        cublas_workspace("sm75")


def test_every_card_has_its_architecture_and_only_sm90_is_measured() -> None:
    assert {g.name: (g.arch, g.measured) for g in GPUS} == {
        "RTX 4090 24 GB": (Arch.SM89, False), "A100 40 GB": (Arch.SM80, False),
        "L40S 48 GB": (Arch.SM89, False), "RTX A6000 48 GB": (Arch.SM86, False),
        "A100 80 GB": (Arch.SM80, False), "H100 80 GB": (Arch.SM90, True), "H200 141 GB": (Arch.SM90, True)}


def estimate(device: int, workspaces: int) -> MemoryEstimate:
    return MemoryEstimate(Method.ANALYTIC, device - 800 * MiB, {}, Phase.BACKWARD, device,
                          cublas_workspaces=workspaces)


def test_device_figure_swaps_the_workspaces_alive_at_the_peak() -> None:
    est = estimate(10 * GiB, 2)
    assert device_bytes_on(est, Arch.SM90) == 10 * GiB
    assert device_bytes_on(est, Arch.SM89) == 10 * GiB - 2 * (32 * MiB - 8 * MiB - 128 * 1024)
    assert device_bytes_on(estimate(10 * GiB, 1), Arch.SM80) == 10 * GiB - (24 * MiB - 128 * 1024)


def test_fits_table_compares_each_card_with_its_own_figure() -> None:
    # 10 MiB more than an RTX 4090 holds on the sm90 figure; 47.75 MiB less on its own
    est = estimate((24564 + 10) * MiB, 2)
    rows = {r["gpu"]: r for r in fits_table(est)}
    r4090 = rows["RTX 4090 24 GB"]
    assert r4090["architecture"] == "sm89" and r4090["measured"] is False
    assert r4090["device_estimate_bytes"] == (24574 * 4 - 191) * MiB // 4   # 24526.25 MiB
    assert r4090["headroom_bytes"] == 151 * MiB // 4   # 37.75 MiB: inside the 3.6% band (about 883 MiB)
    assert r4090["margin_bytes"] == -(-r4090["device_estimate_bytes"] * 36 // 1000)
    assert r4090["verdict"] == "tight" and r4090["fits"] is False
    assert est.fits(r4090["memory_bytes"]) is False  # the sm90 figure alone would say no
    h100 = rows["H100 80 GB"]
    assert h100["device_estimate_bytes"] == est.device_estimate_bytes
    assert h100["headroom_bytes"] == 81559 * MiB - est.device_estimate_bytes and h100["measured"] is True
