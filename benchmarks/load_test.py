"""Load test: many browser sessions at once against the real app, loopback only.

    python benchmarks/load_test.py                    # 20 sessions x 60 s, three waves, llava-1.5-7b
    python benchmarks/load_test.py --sessions 5 --seconds 10 --waves 1 --json

Runs freezelab.ui.loadtest (what each session does, and what counts as an error or a
cross-session mismatch, is described there; tests/test_load.py runs a short version)
and prints its figures: p50 / p95 latency per event (client round trip, queueing
included; the clients run on the same machine, so on a small box they compete with the
server for the cores), the server's CPU time per event, errors, mismatches, and the
server's RSS after start, after a warm-up session, at the end of each wave and after its
sessions have closed. Gradio keeps each closed session's last page until
FREEZELAB_MAX_SESSIONS newer sessions push it out; the test sets it to the wave size
plus 5 (the app's own default is 256), so from the third wave on every new session
replaces a closed one. Growth per session is the RSS difference between the last two
cleanups divided by the sessions of the last wave: what a session leaves behind once the
bound is reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.ui.loadtest import THINK_S, run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--waves", type=int, default=3, help="waves of sessions, one after the other (default 3)")
    p.add_argument("--model", default="llava-1.5-7b")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="the server's FREEZELAB_MAX_SESSIONS (default: the wave size plus 5; 0: the app's own, 256)")
    p.add_argument("--think", type=float, nargs=2, default=THINK_S, metavar=("MIN", "MAX"),
                   help=f"seconds between a session's events, uniform (default {THINK_S[0]:g} {THINK_S[1]:g})")
    p.add_argument("--public", action="store_true", help="run the app in public mode, as on a Space")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    kept = args.sessions + 5 if args.max_sessions is None else args.max_sessions or None
    result = run(args.sessions, args.seconds, args.waves, args.model, max_sessions=kept, think=tuple(args.think),
                 public=args.public)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mode = "public" if result["public"] else "local"
    print(f"{result['sessions']} sessions x {result['seconds']:g} s x {result['waves']} wave(s) on {result['model']} "
          f"({mode} mode), "
          f"{result['think_s'][0]:g}-{result['think_s'][1]:g} s between a session's events: "
          f"{result['events']} events (at least {result['events_per_session_min']} per session)")
    print(f"latency p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms; server CPU "
          f"{result['server_cpu_ms_per_event']:.0f} ms per event")
    print(f"errors {result['errors']}, cross-session mismatches {result['mismatches']}")
    for line in result["first_errors"] + result["first_mismatches"]:
        print("  ", line)
    print("server RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in result["rss_mib"].items()))
    if result["rss_growth_per_session_kib"] is not None:
        kept = result["max_sessions"] or "the default number of"
        print(f"RSS growth per session after cleanup: {result['rss_growth_per_session_kib']} KiB "
              f"(the server keeps {kept} sessions)")


if __name__ == "__main__":
    main()
