"""Human-readable numbers: parameter counts and bytes."""

from __future__ import annotations

KiB = 2**10
MiB = 2**20
GiB = 2**30


def params(n: int | float) -> str:
    """7063427072 -> '7.06B', 20979712 -> '20.98M', 0 -> '0'."""
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


def gib(n: int | float, digits: int = 1) -> str:
    """Bytes in GiB (what nvidia-smi and torch report), e.g. '16.1 GiB'."""
    return f"{n / 2**30:.{digits}f} GiB"


BYTE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def byte_unit(n: int | float) -> tuple[int, str]:
    """The largest binary unit that keeps `n` bytes >= 1: (bytes per unit, name), e.g. (2**20, 'MiB')."""
    for div, suffix in BYTE_UNITS:
        if abs(n) >= div:
            return div, suffix
    return 1, "B"


def nbytes(n: int | float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1."""
    div, suffix = byte_unit(n)
    return f"{n / div:.1f} {suffix}" if div > 1 else f"{float(n):.0f} B"


def percent(part: int | float, whole: int | float) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "0%"


def flops(n: int | float) -> str:
    """FLOPs in the largest decimal unit that keeps the number >= 1: '784.0 TFLOP', '3.2 GFLOP'."""
    n = float(n)
    for div, suffix in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"),
                        (1e3, "KFLOP")):
        if abs(n) >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{n:.0f} FLOP"


def duration(seconds: float) -> str:
    """'12 µs', '35 ms', '6.23 s', '12.5 min', '3.8 h', '2.1 days'."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    for div, suffix, digits in ((86400, "days", 1), (3600, "h", 1), (60, "min", 1)):
        if seconds >= 2 * div if suffix == "days" else seconds >= div:
            return f"{seconds / div:.{digits}f} {suffix}"
    return f"{seconds:.2f} s"
