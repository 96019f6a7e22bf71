"""The GPU sizes the dashboard judges against and draws (from freezelab.memory.gpus)."""

from __future__ import annotations

from freezelab.memory.gpus import GPUS, Gpu, fits_table
from freezelab.memory.result import MemoryEstimate


def common_gpus() -> list[tuple[str, int]]:
    """Every common card as (name, total bytes as nvidia-smi reports it), smallest first."""
    return sorted(((g.name, g.total_bytes) for g in GPUS), key=lambda g: g[1])


def chart_lines(est: MemoryEstimate | None = None) -> list[tuple[str, int]]:
    """One line per nominal size (24/40/48/80/141 GB), at the smallest card sold as that size,
    so a plan under a line fits every card of that size. With an estimate, each line also says its
    card's verdict (fits / tight / does not fit, with the estimate's measured error)."""
    smallest: dict[int, Gpu] = {}
    for g in GPUS:
        if g.nominal_gb not in smallest or g.total_bytes < smallest[g.nominal_gb].total_bytes:
            smallest[g.nominal_gb] = g
    verdicts = {r["gpu"]: r["verdict"] for r in fits_table(est)} if est is not None else {}
    return [(f"{gb} GB" + (f" · {verdicts[g.name]}" if g.name in verdicts else ""), g.total_bytes)
            for gb, g in sorted(smallest.items())]
