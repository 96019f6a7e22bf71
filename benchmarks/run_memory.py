"""What simulations and sanity steps leave in a running server: its RSS after each round of runs.

    python benchmarks/run_memory.py [--rounds 6]

Starts `python app.py` on loopback (local mode) and drives one browser session over raw HTTP
(freezelab.ui.http_client): each round simulates llava-1.5-7b (stage 2, batch 4 x 1,024 tokens),
simulates tiny with a batch of 256 x 16 images, and runs tiny's sanity step (3 steps), each on a
workload of its own so that no run finds another's shapes cached. It prints the server's RSS at
start, after the first round (what the first run imports: torch, transformers' LLaVA code) and after
each later round. Before freezelab.reclaim, every round added what torch's fake-tensor dispatch
cache, unreturned heap and uncollected cycles held (170 MB -> 908 MB over one session).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.ui.http_client import AppConfig, HttpSession  # noqa: E402
from freezelab.ui.launch import launch, stop  # noqa: E402
from freezelab.ui.loadtest import WORKLOAD_START, rss_bytes  # noqa: E402
from freezelab.ui.memory_view import FIELDS  # noqa: E402

MIB = 2**20


def call(session: HttpSession, name: str, data: list) -> None:
    reply = session.call(name, data)
    if reply.error is not None:
        raise SystemExit(f"{name}: {reply.error}")


def workload(session: HttpSession, **values: object) -> None:
    w = {**WORKLOAD_START, **values}
    call(session, "set_workload", [None, *(w[f] for f in FIELDS)])


def one_round(session: HttpSession, r: int) -> None:
    call(session, "load_model", [None, "tiny", "llava-1.5-7b", "architecture only"])
    call(session, "preset_stage2", [None, 4])
    workload(session, batch=4, text_tokens=1024 + r)
    call(session, "simulate", [None])
    call(session, "load_model", [None, "tiny", "tiny", "architecture only"])
    call(session, "preset_stage1", [None, 4])
    workload(session, batch=256, images=16, text_tokens=64 + r, dtype="fp32")
    call(session, "simulate", [None])
    workload(session, batch=2, images=1, text_tokens=128 + r, dtype="fp32")
    call(session, "sanity_step", [None, "cpu", 3, 1e-4])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    proc, url = launch(heartbeat_s=None)
    try:
        session = HttpSession(AppConfig.read(url))
        rss = [rss_bytes(proc.pid)]
        for r in range(args.rounds):
            one_round(session, r)
            rss.append(rss_bytes(proc.pid))
        session.close()
    finally:
        stop(proc)
    print(f"server RSS (MiB): at start {rss[0] / MIB:.0f}, after round 1 {rss[1] / MIB:.0f}, then "
          + ", ".join(f"{x / MIB:.0f}" for x in rss[2:]))
    if len(rss) > 3:
        print(f"growth per round after the second: {(rss[-1] - rss[2]) / (len(rss) - 3) / MIB:+.1f} MiB")


if __name__ == "__main__":
    main()
