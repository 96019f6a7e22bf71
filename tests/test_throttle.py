"""The per-session backoff of public mode (freezelab.throttle): which refusals count, when a session is
paused, for how long, what a paused session is told and how long that answer is held; and the
limits that count as strikes, end to end through the app's handlers."""

from __future__ import annotations

import threading
import time

import pytest

from freezelab.errors import LimitError, PlanError, PlanLimitError, SelectorError, SelectorLimitError
from freezelab.policy import PolicyError, public_policy
from freezelab.throttle import Throttle, ThrottledError
from freezelab.session import Session
from freezelab.ui import handlers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(clock: Clock, **kw: float) -> Throttle:
    return Throttle(**{"strikes": 3, "window_s": 60.0, "pause_s": 30.0, "delay_s": 0.5, **kw}, clock=clock)


def test_only_limits_count(clock: Clock) -> None:
    t = throttle(clock)
    for err in (SelectorError("matches no parameter"), PlanError("not valid JSON"), ValueError("x")):
        for _ in range(5):
            assert t.refused("a", err) is False
    t.admit("a")  # typos and bad files never pause a session
    assert t.paused_for("a") == 0.0
    assert len(t) == 0


def test_third_limit_within_the_window_pauses_for_pause_s(clock: Clock) -> None:
    t = throttle(clock)
    assert t.refused("a", PolicyError("over the budget")) is False
    clock.now += 10
    assert t.refused("a", SelectorLimitError("too long")) is False
    clock.now += 10
    assert t.refused("a", PlanLimitError("1001 rules")) is True
    assert t.paused_for("a") == 30.0
    assert t.paused_for("b") == 0.0  # per session
    with pytest.raises(ThrottledError, match=r"^this session's last 3 requests within 60 s went over this server's "
                                             r"limits, so it is paused for 30 s \(30 s left\); change what"):
        t.admit("a")
    clock.now += 30.0 - 0.001
    with pytest.raises(ThrottledError, match=r"\(0 s left\)"):
        t.admit("a")
    clock.now += 0.001
    t.admit("a")  # 30 s after the third strike


def test_strikes_older_than_the_window_fall_out(clock: Clock) -> None:
    t = throttle(clock)
    t.refused("a", PolicyError("x"))
    t.refused("a", PolicyError("x"))
    clock.now += 60.0  # the first two are exactly WINDOW_S old: out
    assert t.refused("a", PolicyError("x")) is False
    assert t.refused("a", PolicyError("x")) is False
    assert t.refused("a", PolicyError("x")) is True


def test_a_pause_starts_a_fresh_count_and_is_not_itself_a_strike(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(3):
        t.refused("a", PolicyError("x"))
    assert t.refused("a", ThrottledError("paused")) is False
    clock.now += 30.0
    assert t.paused_for("a") == 0.0
    assert t.refused("a", PolicyError("x")) is False  # the strikes before the pause were cleared
    assert t.refused("a", PolicyError("x")) is False
    assert t.refused("a", PolicyError("x")) is True


def strike_out(t: Throttle, client: str = "a") -> None:
    for _ in range(t.strikes):
        t.refused(client, PolicyError("x"))


def test_a_session_paused_again_soon_is_paused_twice_as_long_up_to_the_cap(clock: Clock) -> None:
    t = throttle(clock, repeat_s=600.0, max_pause_s=120.0)
    pauses = []
    for _ in range(5):
        strike_out(t)
        pauses.append(t.paused_for("a"))
        clock.now += pauses[-1] + 599.0   # each next pause within REPEAT_S of the last one's end
    assert pauses == [30.0, 60.0, 120.0, 120.0, 120.0]
    strike_out(t)
    with pytest.raises(ThrottledError, match=r"so it is paused for 120 s \(120 s left\)"):
        t.admit("a")


def test_a_pause_long_after_the_last_is_short_again(clock: Clock) -> None:
    t = throttle(clock, repeat_s=600.0)
    strike_out(t)
    clock.now += 30.0
    strike_out(t)
    assert t.paused_for("a") == 60.0
    clock.now += 60.0 + 600.0   # REPEAT_S after the last pause ended: forgiven
    strike_out(t)
    assert t.paused_for("a") == 30.0
    assert t.was_paused("a") and not t.was_paused("b")


def test_a_paused_session_loses_its_kept_page_when_its_tab_closes(monkeypatch) -> None:
    """Gradio keeps a closed tab's page (each output's last value) for an hour; the unload handler drops a
    paused session's at once, and leaves every other session's."""
    import inspect

    import gradio as gr
    from gradio.state_holder import StateHolder

    from freezelab.ui import verify_panel
    from freezelab.ui.blocks import create_app

    monkeypatch.setattr(verify_panel, "trim_heap_soon", lambda: False)  # no trim timer left for the next test
    demo = create_app(handlers.App.for_policy(public_policy()))
    holder = StateHolder()
    holder.set_blocks(demo)
    unload = [fn.fn for fn in demo.fns.values() if any(t[1] == "unload" for t in fn.targets)][0]
    sh = inspect.getclosurevars(unload).nonlocals["sh"]
    for client in ("attacker", "student", "striker"):
        holder[client]
    strike_out(sh.throttle, "attacker")
    sh.throttle.refused("striker", PolicyError("x"))   # one refusal is not a pause
    for client in ("attacker", "student", "striker"):
        unload(gr.Request(session_hash=client))
    assert sorted(holder.session_data) == ["striker", "student"]


def _asgi_post(gate, path: str, body: bytes, chunks: int = 1) -> tuple[float, bytes | None, list[dict]]:
    """POST `body` (in `chunks` pieces) through `gate` to an app that reads the whole body:
    (seconds, what the app read or None when it was not called, what the gate itself sent back)."""
    import asyncio

    got: list[bytes] = []
    sent: list[dict] = []

    async def app(scope, receive, send):
        data, more = b"", True
        while more:
            message = await receive()
            data += message.get("body", b"")
            more = message.get("more_body", False)
        got.append(data)

    async def main() -> float:
        step = max(1, -(-len(body) // chunks))
        parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
        messages = [{"type": "http.request", "body": b, "more_body": i < len(parts) - 1} for i, b in enumerate(parts)]

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        gate.app = app
        start = time.monotonic()
        await gate({"type": "http", "method": "POST", "path": path}, receive, send)
        return time.monotonic() - start

    seconds = asyncio.run(main())
    return seconds, (got[0] if got else None), sent


def test_the_gate_holds_back_a_paused_session_s_queue_requests_then_answers_them_itself(clock: Clock) -> None:
    import json

    from freezelab.ui.pause_gate import TOO_MANY, PauseGate

    t = Throttle(delay_s=0.2)
    strike_out(t, "bad")
    gate = PauseGate(None, t)
    bad = json.dumps({"data": [None, 4], "fn_index": 3, "session_hash": "bad"}).encode()
    good = json.dumps({"data": [None, 4], "fn_index": 3, "session_hash": "good"}).encode()
    seconds, read, sent = _asgi_post(gate, "/gradio_api/queue/join", bad, chunks=3)
    assert seconds >= 0.2 and read is None   # held, then refused without reaching Gradio
    start, answer = sent
    assert start["status"] == TOO_MANY == 429
    headers = dict(start["headers"])
    assert 1 <= int(headers[b"retry-after"]) <= 30
    detail = json.loads(answer["body"])["detail"]   # what Gradio's client shows as the error
    assert "paused for 30 s" in detail and int(headers[b"content-length"]) == len(answer["body"])
    for path, body in (("/gradio_api/queue/join", good),      # a session that is not paused
                       ("/gradio_api/upload", bad),           # only queue requests are held
                       ("/gradio_api/queue/join", b"{not json")):
        seconds, read, sent = _asgi_post(gate, path, body, chunks=2)
        assert seconds < 0.1 and read == body and sent == []   # straight on, the body handed on whole


def test_the_gate_passes_a_request_on_when_the_pause_ends_during_its_hold() -> None:
    import json

    from freezelab.ui.pause_gate import PauseGate

    t = Throttle(delay_s=0.2, pause_s=0.1)
    strike_out(t, "bad")
    body = json.dumps({"data": [], "fn_index": 0, "session_hash": "bad"}).encode()
    seconds, read, sent = _asgi_post(PauseGate(None, t), "/gradio_api/queue/join", body)
    assert seconds >= 0.2 and read == body and sent == []


def test_a_pause_that_begins_after_the_gate_is_refused_before_the_handler_runs() -> None:
    """A request that passed the gate before its session's pause began: the handler does not run, and
    the page gets the pause as an error (its outputs left as they are)."""
    import types

    import gradio as gr
    from gradio.context import LocalContext

    from freezelab.ui.shared import Shared

    app = handlers.App.for_policy(public_policy())
    sh = Shared(app, None, None)
    strike_out(app.throttle, "late")
    ran: list[int] = []
    token = LocalContext.request.set(types.SimpleNamespace(session_hash="late"))
    try:
        with pytest.raises(gr.Error, match="paused for 30 s"):
            sh.show(lambda: ran.append(1))
    finally:
        LocalContext.request.reset(token)
    assert ran == []


def test_public_mode_launches_with_the_gate_and_local_mode_without() -> None:
    from freezelab.ui.blocks import launch_options
    from freezelab.ui.live_pages import LivePages
    from freezelab.ui.pause_gate import PauseGate

    public = handlers.App.for_policy(public_policy())
    pages, gate = launch_options(public)["app_kwargs"]["middleware"]
    assert gate.cls is PauseGate and gate.kwargs["throttle"] is public.throttle
    assert pages.cls is LivePages
    assert "app_kwargs" not in launch_options(handlers.App()) and "app_kwargs" not in launch_options()


def test_previews_share_a_server_wide_slot() -> None:
    from freezelab.ui.blocks import create_app
    from freezelab.ui.shared import PREVIEW_CONCURRENCY, PREVIEW_SLOTS

    demo = create_app(handlers.App.for_policy(public_policy()))
    preview = [fn for fn in demo.fns.values() if fn.api_name == "preview"]
    assert [(fn.concurrency_id, fn.concurrency_limit) for fn in preview] == [(PREVIEW_CONCURRENCY, PREVIEW_SLOTS)]
    assert PREVIEW_SLOTS < 8   # fewer than the handlers' default, else the slot bounds nothing


def test_records_are_bounded_least_recently_seen_first(clock: Clock) -> None:
    t = throttle(clock, max_clients=2)
    for c in ("a", "b", "a", "c"):
        t.refused(c, PolicyError("x"))
    assert len(t) == 2  # b, seen least recently, went
    assert t.refused("a", PolicyError("x")) is True  # a kept its two strikes
    assert t.refused("b", PolicyError("x")) is False  # b starts again from none: its earlier strike is gone
    assert t.refused("b", PolicyError("x")) is False


def test_limit_errors_are_the_bounds() -> None:
    assert issubclass(PolicyError, LimitError)
    assert issubclass(SelectorLimitError, SelectorError) and issubclass(SelectorLimitError, LimitError)
    assert issubclass(PlanLimitError, PlanError) and issubclass(PlanLimitError, LimitError)
    assert not issubclass(ThrottledError, LimitError)


def test_public_app_throttles_and_local_does_not() -> None:
    from freezelab.ui.shared import Shared

    assert isinstance(Shared(handlers.App.for_policy(public_policy()), None, None).throttle, Throttle)
    assert Shared(handlers.App.for_policy(handlers.LOCAL), None, None).throttle is None


@pytest.mark.parametrize(("selector", "kind"), [
    ("re:a{4294967294}", SelectorLimitError),
    ("re:(?:[a-z]{1000}){1000}", SelectorLimitError),
    ("re:a(", SelectorError),
    ("nothing_like_this", SelectorError),
])
def test_which_selector_refusals_are_limits(selector: str, kind: type) -> None:
    app = handlers.App.for_policy(public_policy())
    seen: list[Exception] = []
    text = handlers.preview_selector(app, Session(), selector, seen.append)
    assert text.startswith("⚠️ ") and len(seen) == 1
    assert type(seen[0]) is kind


def test_a_session_that_keeps_hitting_limits_is_paused_and_others_are_not():
    """The launched app in public mode: three over-budget simulations from one browser session pause it
    (every event it sends is then refused, naming the pause, after DELAY_S, by the gate: no handler runs);
    another session works on, and its event of the same listener is not held up behind the paused one's."""
    from freezelab.throttle import DELAY_S, PAUSE_S, STRIKES
    from freezelab.ui.http_client import AppConfig, HttpSession
    from freezelab.ui.launch import launch, stop
    from freezelab.ui.memory_view import FIELDS, control_value
    from freezelab.workload import Workload

    huge = Workload(batch=4096, text_tokens=1_048_576, images=64, dtype="bf16")
    proc, url = launch(args=("--public",))
    try:
        config = AppConfig.read(url)
        attacker, student = HttpSession(config), HttpSession(config)
        assert attacker.call("set_workload", [None, *(control_value(huge, f) for f in FIELDS)]).error is None
        for _ in range(STRIKES):
            reply = attacker.call("simulate", [None])
            assert reply.error is not None and "this server allows 60 s of CPU time per run" in reply.error
        before = dict(attacker.shown)
        paused = attacker.call("simulate", [None])
        preset = attacker.call("preset_stage2", [None, 4])
        preview = attacker.call("preview", [None, "@llm"])
        upload = attacker.call("import_plan", [None, attacker.upload("plan.txt", b"train @llm")])
        unchanged = attacker.shown == before
        assert student.call("preset_stage2", [None, 4]).error is None  # warm: its view is kept
        held: list = []
        thread = threading.Thread(target=lambda: held.append((attacker.call("preset_stage2", [None, 4]),
                                                              time.monotonic())))
        thread.start()
        time.sleep(DELAY_S / 5)   # the attacker's request is being held now
        ok = student.call("preset_stage2", [None, 4])
        ok_done = time.monotonic()
        thread.join()
        student_status = str(student.value("fl-status"))
    finally:
        stop(proc)
    pause = f"paused for {PAUSE_S:.0f} s"
    for reply in (paused, preset, preview, upload, held[0][0]):
        assert reply.error is not None and reply.error.startswith("HTTP 429") and pause in reply.error
        assert "this server allows" not in reply.error
        assert reply.seconds >= DELAY_S
    assert unchanged   # an error: the page's outputs stay as they are
    assert ok_done < held[0][1]   # the student's preset went first: the held request was not in the listener's slot
    assert ok.error is None and not student_status.startswith("⚠️")


# -- what closing sessions hand back ----------------------------------------------------------------

def test_closing_sessions_trim_the_heap_once_per_burst(monkeypatch):
    """Thirty tabs closing together schedule one malloc_trim, TRIM_DELAY_S after the first; a later
    close schedules the next."""
    from freezelab import reclaim

    trimmed = threading.Event()
    calls: list[int] = []
    monkeypatch.setattr(reclaim, "_malloc_trim", lambda: lambda pad: (calls.append(pad), trimmed.set()))
    assert [reclaim.trim_heap_soon(0.2) for _ in range(30)] == [True] + [False] * 29
    assert calls == []  # not yet: the rest of the class is still closing
    assert trimmed.wait(5)
    deadline = time.monotonic() + 5
    while reclaim.trim_heap_soon(0.01) is False and time.monotonic() < deadline:
        pass  # the timer clears its slot just after it trims
    trimmed.clear()
    assert trimmed.wait(5)
    assert calls == [0, 0]


def test_the_readme_states_the_pause_this_code_applies():
    from pathlib import Path

    from freezelab.throttle import DELAY_S, MAX_PAUSE_S, PAUSE_S, REPEAT_S, STRIKES, WINDOW_S

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert (f"{STRIKES} times within {WINDOW_S:.0f} s is paused for {PAUSE_S:.0f} s" in readme
            and f"held {DELAY_S:g} s in front of Gradio's queue" in readme
            and f"paused again within {REPEAT_S:.0f} s of the last pause's end, twice as long as the last time, "
                f"up to {MAX_PAUSE_S:.0f} s" in readme)


def test_the_queue_polls_less_often_than_gradio_s_default() -> None:
    """Gradio's queue wakes every millisecond to look for work; the app makes it every QUEUE_POLL_S (fails when a
    Gradio upgrade renames the knobs, so that the change is noticed)."""
    from freezelab.ui.blocks import QUEUE_POLL_S, create_app

    demo = create_app(handlers.App())
    assert {k: getattr(demo._queue, k) for k in QUEUE_POLL_S} == QUEUE_POLL_S


def test_the_busiest_events_send_their_values_postprocessed_in_their_own_thread() -> None:
    """Presets, tree toggles, rules, undo / reset, loads and workload edits are wired with postprocess=False
    (Shared.listen): their handler returns what the page receives, each component's own postprocess applied
    (a chart as Gradio's plotly payload), and the session state as it is."""
    from freezelab.session import Session
    from freezelab.ui.blocks import create_app

    demo = create_app(handlers.App())
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    for name in ("preset_stage2", "train", "freeze", "undo", "reset", "load_model", "load_known", "set_workload"):
        assert fns[name].postprocess is False, name
    out = fns["preset_stage2"].fn(Session(), 4)
    kinds = {type(block).__name__: value for block, value in out.items()}
    assert isinstance(kinds["State"], Session)
    plots = [value for block, value in out.items() if type(block).__name__ == "Plot" and value is not None]
    assert plots and all(p["type"] == "plotly" and isinstance(p["plot"], str) for p in plots)
