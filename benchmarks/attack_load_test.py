"""A class of 30 students works while four attackers send the worst inputs known (loopback only).

    python benchmarks/attack_load_test.py [--sessions 30] [--seconds 60] [--attackers 4] [--runs 3] [--again 60]
                                          [--fresh-sessions] [--no-compare] [--json]

Runs freezelab.ui.attacks (what the attackers send, and what the class does, is described there and in
freezelab.ui.loadtest) against `python app.py --public` and prints: the class's latency (p50 / p95
per event, from when it came due to its answer, queueing included) and errors; for each attack how
many were sent and the median, p95 and slowest time until it was answered, with the answer's first
words; and the server's RSS at start, at its baseline (after a warm-up student), when the attack
ended and once every session had closed. Targets (issue 17): the class's p95 under 500 ms, every
attack answered in under 1 s, the server's memory back to its baseline. With --runs N, each figure
is the median of N servers run one after the other (slowest answers: the slowest of all).

With --again S (default 60), once every session has closed, the same attackers run alone for S more
seconds and the RSS is read again once they have closed: whether what the first attack left grows with
a second one (a leak would) or stays (caches and allocator arenas filled once).

With --fresh-sessions every attack comes from a new session that never opens a page, as a client that
never keeps its session hash would send it: the throttle never sees one session twice, so none is paused.

Unless --no-compare, each attacked server is followed by one that runs the same class (same seed, same
warm-up) with no attackers: the class leaves its own closed sessions' pages and kept results behind, so
what the attack left is the difference between the two servers' growth over their baselines, and what
it cost the class is the difference between the two p95s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.ui.attacks import ATTACKERS, REFUSAL_TARGET_S, run  # noqa: E402


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_result(runs: list[dict]) -> None:
    last = runs[-1]
    many = f"median of {len(runs)} runs" if len(runs) > 1 else "one run"
    cls = [r["class"] for r in runs]
    print(f"{last['sessions']} students x {last['seconds']:g} s on {last['model']} beside {last['attackers']} "
          f"attackers, public mode ({many})")
    print(f"class: {sum(c['events'] for c in cls)} events; latency p50 {median([c['p50_ms'] for c in cls]):.0f} ms, "
          f"p95 {median([c['p95_ms'] for c in cls]):.0f} ms (per run: "
          + ", ".join(f"{c['p95_ms']:.0f}" for c in cls) + " ms); "
          f"errors {sum(c['errors'] for c in cls) + sum(r['warm_errors'] for r in runs)}, "
          f"cross-session mismatches {sum(c['mismatches'] for c in cls)}")
    for line in [e for c in cls for e in c["first_errors"] + c["first_mismatches"]][:5]:
        print("  ", line)
    print(f"attacks (time to the answer; target under {REFUSAL_TARGET_S:g} s):")
    for name in last["attacks"]:
        rows = [r["attacks"][name] for r in runs if name in r["attacks"]]
        print(f"  {name}: {sum(x['sent'] for x in rows)} sent, median {median([x['median_ms'] for x in rows]):.0f} ms, "
              f"p95 {median([x['p95_ms'] for x in rows]):.0f} ms, slowest {max(x['max_ms'] for x in rows)} ms: "
              f"{rows[0]['answer'][:110]}")
    failures = [f for r in runs for f in r["attack_failures"]]
    print(f"attacks not refused or not bounded: {sum(r['attack_failure_count'] for r in runs)}")
    for line in failures[:5]:
        print("  ", line)
    keys = list(last["rss_mib"])
    print("server RSS (MiB): " + ", ".join(f"{k} {median([r['rss_mib'][k] for r in runs]):.1f}" for k in keys)
          + "; after cleanup minus baseline, per run: "
          + ", ".join(f"{r['rss_mib']['cleaned'] - r['rss_mib']['baseline']:+.1f}" for r in runs) + " MiB")
    again = [r["rss_mib"]["again_cleaned"] - r["rss_mib"]["cleaned"] for r in runs if "again_cleaned" in r["rss_mib"]]
    if again:
        print("a second attack (the attackers alone) after every session had closed: RSS once they closed minus "
              "before it, per run: " + ", ".join(f"{g:+.1f}" for g in again) + " MiB")
    print(f"server alive at the end: {all(r['server_alive'] for r in runs)}")


def print_comparison(runs: list[dict], alone: list[dict]) -> None:
    grown = [r["rss_mib"]["cleaned"] - r["rss_mib"]["baseline"] for r in runs]
    grown_alone = [a["rss_mib"]["cleaned"] - a["rss_mib"]["baseline"] for a in alone]
    print(f"the same class with no attackers (one server per run, same seed): p95 "
          f"{median([a['class']['p95_ms'] for a in alone]):.0f} ms (per run: "
          + ", ".join(f"{a['class']['p95_ms']:.0f}" for a in alone) + " ms), errors "
          f"{sum(a['class']['errors'] for a in alone)}; RSS after cleanup minus baseline per run: "
          + ", ".join(f"{g:+.1f}" for g in grown_alone) + " MiB")
    print("what the attack left (growth with attackers minus growth without, per run): "
          + ", ".join(f"{g - h:+.1f}" for g, h in zip(grown, grown_alone)) + " MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=30)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--attackers", type=int, default=ATTACKERS)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--again", type=float, default=60.0, help="seconds of a second attack, attackers alone (0: none)")
    p.add_argument("--fresh-sessions", action="store_true",
                   help="each attack from a new page-less session (never paused)")
    p.add_argument("--no-compare", action="store_true", help="no class-alone server beside each attacked one")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    runs, alone = [], []
    for r in range(args.runs):
        runs.append(run(args.sessions, args.seconds, args.attackers, seed=1000 * r, again_s=args.again,
                        fresh=args.fresh_sessions))
        if not args.no_compare:
            alone.append(run(args.sessions, args.seconds, 0, seed=1000 * r))
    if args.json:
        print(json.dumps({"attacked": runs, "alone": alone}, indent=2))
        return
    print_result(runs)
    if alone:
        print_comparison(runs, alone)


if __name__ == "__main__":
    main()
