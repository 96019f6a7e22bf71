"""What every rank of a sharded sanity step saw, gathered into one report: each rank's measured peak
beside the per-GPU estimate, its checks, and whether all ranks agree.

Pure Python on plain data (`RankSummary` dicts), so the agreement rules are testable without a process
group; `exchange` is the one collective.
"""

from __future__ import annotations

import resource
import socket
import sys
from typing import Any

from freezelab.checks import Check
from freezelab.step.report import StepReport


def peak_rss_bytes() -> int:
    """This process's peak resident memory over its lifetime (the CPU's only per-process peak)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def summary(report: StepReport, rank: int, digest: str) -> dict[str, Any]:
    """One rank's plain-data summary of its run."""
    steady = [s for s in report.steps if s.steady] or report.steps
    allocated = [s.peak_allocated_bytes for s in steady if s.peak_allocated_bytes is not None]
    reserved = [s.peak_reserved_bytes for s in steady if s.peak_reserved_bytes is not None]
    peak, est = (max(allocated) if allocated else None), report.estimate.get("peak_bytes")
    return {
        "rank": rank,
        "host": socket.gethostname(),
        "device": report.device,
        "device_name": report.device_name,
        "status": str(report.status),
        "losses": [s.loss for s in report.steps],
        "peak_allocated_bytes": peak,
        "peak_reserved_bytes": max(reserved) if reserved else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "estimate_bytes": est,
        "relative_error": None if peak is None or not est else (peak - est) / est,
        "checks": {name: c.passed for name, c in report.checks.items()},
        "passed": report.passed,
        "weights_digest": digest,
        "trainable_params": report.trainable_params,
    }


def exchange(mine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's summary, in rank order (a collective)."""
    from freezelab.step.world import gather_objects

    return gather_objects(mine)


def agreement(ranks: list[dict[str, Any]]) -> Check:
    """The ranks_agree check: every rank ended with the same weights (by fingerprint), the same check
    results and the same trainable count as rank 0."""
    first = ranks[0]
    differ = {}
    for r in ranks[1:]:
        what = [label for key, label in (("weights_digest", "weights"), ("checks", "check results"),
                                         ("trainable_params", "trainable count"), ("status", "status"))
                if r[key] != first[key]]
        if what:
            differ[f"rank {r['rank']}"] = "differs from rank 0 in " + ", ".join(what)
    if not differ:
        return Check("ranks_agree", True, "failure",
                     f"all {len(ranks)} ranks ended with identical weights and identical check results")
    return Check("ranks_agree", False, "failure",
                 f"{len(differ)} of {len(ranks)} ranks disagree with rank 0: the replicas or shards went out "
                 "of step", tuple(differ), len(differ), differ)


def merge(report: StepReport, ranks: list[dict[str, Any]], world: Any, sharding: str, offload: bool) -> None:
    """Rank 0's report becomes the run's: the ranks_agree check and every rank's summary."""
    report.checks["ranks_agree"] = agreement(ranks)
    report.distributed = {
        "world_size": world.size,
        "sharding": sharding,
        "backend": world.backend,
        "offload_optimizer": offload,
        "timeout_s": world.timeout_s,
        "all_ranks_passed": all(r["passed"] for r in ranks),
        "ranks": ranks,
    }
