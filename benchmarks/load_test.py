"""Load test: a class of students on one server, loopback only.

    python benchmarks/load_test.py                    # 30 students x 60 s, three waves, llava-1.5-7b
    python benchmarks/load_test.py --sessions 5 --seconds 10 --waves 1 --json
    python benchmarks/load_test.py --runs 3 --waves 1 # three servers one after another: medians

Runs freezelab.ui.loadtest (what each student does, open-loop, and what counts as an error or a
cross-session mismatch, is described there; tests/test_load.py runs a short version) and prints its
figures: p50 / p95 latency per event (from when the event came due to its answer, queueing
included; the students are raw HTTP clients in this process, on the same cores as the server),
the server's CPU time per event (everything the server process did while the students worked,
divided by their events) and per page load (a student's first load of the model), the clients'
own CPU per event, errors, mismatches, and the server's RSS after start,
after a warm-up student, at the end of each wave and after its sessions have closed. Gradio keeps
each closed session's last page until FREEZELAB_MAX_SESSIONS newer sessions push it out; the test
sets it to the wave size plus 5 (the app's own default is 256), so from the third wave on every new
session replaces a closed one. Growth per session is the RSS difference between the last two
cleanups divided by the sessions of the last wave: what a session leaves behind once the bound is
reached. With --runs N, each figure is the median over N servers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.ui.loadtest import EVENT_GAP_S, run  # noqa: E402

MEDIAN_KEYS = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "server_cpu_ms_per_event", "server_cpu_ms_per_page_load",
               "client_cpu_ms_per_event", "load_p95_ms")


def print_result(result: dict, runs: list[dict]) -> None:
    mode = "public" if result["public"] else "local"
    many = f", median of {len(runs)} runs" if len(runs) > 1 else ""
    print(f"{result['sessions']} students x {result['seconds']:g} s x {result['waves']} wave(s) on {result['model']} "
          f"({mode} mode{many}), open-loop: one event every {result['gap_s']:g} s per student on average "
          f"(Poisson); {result['events']} events (at least {result['events_per_session_min']} per student)")
    print(f"latency p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
          f"max {result['max_ms']:.0f} ms; p95 by event: "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in result["p95_ms_by_kind"].items())
          + f"; the students' first page load p95 {result['load_p95_ms']:.0f} ms")
    print(f"server CPU {result['server_cpu_ms_per_event']:.1f} ms per event (the whole server process while the "
          f"students work), {result['server_cpu_ms_per_page_load']:.0f} ms per student's first page load; "
          f"clients {result['client_cpu_ms_per_event']:.1f} ms per event")
    print(f"errors {result['errors']}, cross-session mismatches {result['mismatches']}")
    for line in result["first_errors"] + result["first_mismatches"]:
        print("  ", line)
    print("server RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in result["rss_mib"].items()))
    if result["rss_growth_per_session_kib"] is not None:
        kept = result["max_sessions"] or "the default number of"
        print(f"RSS growth per session after cleanup: {result['rss_growth_per_session_kib']} KiB "
              f"(the server keeps {kept} sessions)")
    if len(runs) > 1:
        print("per run: " + "; ".join(f"p95 {r['p95_ms']:.0f} ms, CPU {r['server_cpu_ms_per_event']:.1f} ms/event"
                                      for r in runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=30, help="students (default 30)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--waves", type=int, default=3, help="waves of students, one after the other (default 3)")
    p.add_argument("--runs", type=int, default=1, help="servers, one after another; figures are medians")
    p.add_argument("--model", default="llava-1.5-7b")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="the server's FREEZELAB_MAX_SESSIONS (default: the wave size plus 5; 0: the app's own, 256)")
    p.add_argument("--gap", type=float, default=EVENT_GAP_S,
                   help=f"mean seconds between a student's events (default {EVENT_GAP_S:g})")
    p.add_argument("--public", action="store_true", help="run the app in public mode, as on a Space")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    kept = args.sessions + 5 if args.max_sessions is None else args.max_sessions or None
    runs = [run(args.sessions, args.seconds, args.waves, args.model, seed=1000 * r, max_sessions=kept, gap=args.gap,
                public=args.public) for r in range(args.runs)]
    result = dict(runs[-1])
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if r[key] is not None]
        result[key] = statistics.median(values) if values else None
    result["errors"] = sum(r["errors"] for r in runs)
    result["mismatches"] = sum(r["mismatches"] for r in runs)
    if args.json:
        print(json.dumps({"median": result, "runs": runs}, indent=2))
        return
    print_result(result, runs)


if __name__ == "__main__":
    main()
