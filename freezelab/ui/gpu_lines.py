"""The GPU sizes the dashboard judges against and draws (from freezelab.memory.gpus)."""

from __future__ import annotations

from freezelab.memory.gpus import GPUS


def common_gpus() -> list[tuple[str, int]]:
    """Every common card as (name, total bytes as nvidia-smi reports it), smallest first."""
    return sorted(((g.name, g.total_bytes) for g in GPUS), key=lambda g: g[1])


def chart_lines() -> list[tuple[str, int]]:
    """One line per nominal size (24/40/48/80/141 GB), at the smallest card sold as that size,
    so a plan under a line fits every card of that size."""
    smallest: dict[int, int] = {}
    for g in GPUS:
        smallest[g.nominal_gb] = min(smallest.get(g.nominal_gb, g.total_bytes), g.total_bytes)
    return [(f"{gb} GB", size) for gb, size in sorted(smallest.items())]
