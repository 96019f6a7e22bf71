"""Public mode past the session limit (freezelab.ui.live_pages): a session whose page is open keeps its
state while a client opening session after session without a page fills the server's StateHolder."""

from __future__ import annotations

import asyncio

from gradio.state_holder import StateHolder

from freezelab.ui.live_pages import LivePages, heartbeat_session, keep_open_pages


def holder_with(capacity: int, sessions: list[str]) -> StateHolder:
    holder = StateHolder()
    holder.capacity = capacity
    for s in sessions:
        holder.session_data[s] = object()
        holder.time_last_used[s] = 0
    return holder


def add(holder: StateHolder, session: str) -> None:
    holder.session_data[session] = object()   # as StateHolder.__getitem__ does for a new session
    holder.update(session)


def test_past_capacity_the_least_recent_session_without_an_open_page_goes_first() -> None:
    holder = holder_with(3, ["student", "x1", "x2"])
    keep_open_pages(holder, lambda s: s == "student")
    for s in ("x3", "x4", "x5"):
        add(holder, s)
    assert list(holder.session_data) == ["student", "x4", "x5"]   # the student was the least recently used
    assert "x1" not in holder.time_last_used and "student" in holder.time_last_used


def test_when_every_session_has_an_open_page_the_least_recent_goes_as_in_gradio() -> None:
    holder = holder_with(2, ["a", "b"])
    keep_open_pages(holder, lambda s: True)
    add(holder, "c")
    assert list(holder.session_data) == ["b", "c"]


def test_the_session_being_used_is_never_the_one_dropped() -> None:
    holder = holder_with(1, ["open"])
    keep_open_pages(holder, lambda s: s == "open")
    add(holder, "new")   # only the open one could go: it does, the new one stays
    assert list(holder.session_data) == ["new"]
    holder.capacity = 0
    add(holder, "newer")
    assert "newer" in holder.session_data


def test_gradio_s_own_eviction_drops_the_open_session() -> None:
    """The control: without keep_open_pages the student goes."""
    holder = holder_with(3, ["student", "x1", "x2"])
    add(holder, "x3")
    assert "student" not in holder.session_data


def test_the_middleware_counts_a_session_s_open_heartbeats_and_installs_the_eviction() -> None:
    holder = StateHolder()
    seen: list[bool] = []
    release = asyncio.Event()

    async def app(scope, receive, send):
        if "/heartbeat/" in scope["path"]:
            await release.wait()   # the stream stays open until the tab closes

    pages = LivePages(app)
    fastapi = type("GradioApp", (), {"state_holder": holder})()

    async def main() -> None:
        def request(path: str, method: str = "GET"):
            return pages({"type": "http", "method": method, "path": path, "app": fastapi}, None, None)

        one = asyncio.create_task(request("/gradio_api/heartbeat/abc"))
        two = asyncio.create_task(request("/gradio_api/heartbeat/abc"))   # a reconnect overlapping
        await asyncio.sleep(0.01)
        await request("/gradio_api/queue/join", "POST")
        seen.append(pages.is_open("abc"))
        seen.append(pages.is_open("other"))
        release.set()
        await asyncio.gather(one, two)
        seen.append(pages.is_open("abc"))

    asyncio.run(main())
    assert seen == [True, False, False]
    assert heartbeat_session({"type": "http", "method": "GET", "path": "/gradio_api/heartbeat/abc"}) == "abc"
    for path in ("/gradio_api/file=/tmp/heartbeat/abc", "/gradio_api/heartbeat/", "/gradio_api/heartbeat/a/b"):
        assert heartbeat_session({"type": "http", "method": "GET", "path": path}) is None, path
    assert heartbeat_session({"type": "http", "method": "POST", "path": "/gradio_api/heartbeat/abc"}) is None
    assert holder.update.__qualname__.startswith("keep_open_pages")
    assert dict(pages.open) == {}


def test_a_student_keeps_their_state_while_pageless_sessions_flood_the_server():
    """The launched app in public mode with room for 3 sessions: a student with an open page loads
    llava-1.5-7b; 8 clients with no page each send a request from a new session; the student's next
    rule still applies to llava-1.5-7b (with Gradio's own eviction the student's state went, and the
    rule was refused: it 'matches no parameter of tiny')."""
    import time

    from freezelab.ui.http_client import AppConfig, HttpSession
    from freezelab.ui.launch import launch, stop

    proc, url = launch({"FREEZELAB_MAX_SESSIONS": "3"}, args=("--public",))
    try:
        config = AppConfig.read(url)
        student = HttpSession(config)
        loaded = student.call("load_model", [None, "tiny", "llava-1.5-7b", "architecture only"])
        time.sleep(0.5)   # the student's heartbeat stream is open by now
        for _ in range(8):
            flood = HttpSession(config, heartbeat=False)
            assert flood.call("preset_stage2", [None, 4]).error is None
            flood.close()
        rule = student.call("train", [None, "model.language_model.layers.29.self_attn"])
        status = str(student.value("fl-status"))
        student.close()
    finally:
        stop(proc)
    assert loaded.error is None and rule.error is None
    assert "of tiny" not in status and not status.startswith("⚠️"), status
