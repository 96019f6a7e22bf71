"""The load test (freezelab.ui.loadtest) in its short CI form: concurrent sessions against the launched
app (loopback only). benchmarks/load_test.py prints the full run's latency and memory figures; here only
correctness counts: no errors and no session ever seeing a count that is not its own plan's."""

from __future__ import annotations

from freezelab.ui.loadtest import run


def test_concurrent_sessions_see_only_their_own_plans():
    result = run(sessions=5, seconds=10, waves=1, model="llava-1.5-7b", max_sessions=8)
    assert result["server_alive"]
    assert result["errors"] == 0, result["first_errors"]
    assert result["mismatches"] == 0, result["first_mismatches"]
    # every session really took part: it loaded the model and made several changes
    assert result["events_per_session_min"] >= 3
