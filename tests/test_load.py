"""The load test (freezelab.ui.loadtest) in its short CI form: concurrent students against the launched
app (loopback only), open-loop, over raw HTTP. benchmarks/load_test.py prints the full run's latency,
CPU and memory figures; here only correctness counts: no errors and no session ever seeing a count
that is not its own plan's, after presets, tree checkboxes and workload edits."""

from __future__ import annotations

from freezelab.ui.loadtest import run


def test_concurrent_sessions_see_only_their_own_plans():
    result = run(sessions=5, seconds=10, waves=1, model="llava-1.5-7b", max_sessions=8, gap=0.7, heartbeat_s=1)
    assert result["server_alive"]
    assert result["errors"] == 0, result["first_errors"]
    assert result["mismatches"] == 0, result["first_mismatches"]
    # every session really took part: it loaded the model and made several changes of each kind
    assert result["events_per_session_min"] >= 3
    assert set(result["p95_ms_by_kind"]) == {"preset", "toggle", "workload"}
