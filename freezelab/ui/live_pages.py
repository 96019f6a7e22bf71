"""Public mode: sessions with an open page keep their state when the server's session limit is reached.

Gradio keeps each browser session's state (its plan, its workload, each output's last value) in a
StateHolder of at most `state_session_capacity` sessions (freezelab.ui.blocks.MAX_SESSIONS) and, past
that, drops the least recently used one, whether its tab is open or not. A client that sends every
request with a new session hash (measured: four such clients open about 1,150 sessions a minute) then
pushes out the state of every student who paused for a few seconds, and that student's next click
lands on a fresh default session. This ASGI middleware counts each session's open heartbeat streams
(`GET .../heartbeat/<session>`: an open page keeps one, and it ends when the tab closes) and makes the
StateHolder drop, past its capacity, the least recently used session with no open page first; only
when every kept session has one does the least recently used go, as before.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from freezelab.ui.http_client import API
from freezelab.ui.pause_gate import ASGIApp, Receive, Scope, Send

HEARTBEAT = "/heartbeat/"   # Gradio's route an open page keeps a stream on: <API>/heartbeat/<session hash>


class LivePages:
    """ASGI middleware (`Middleware(LivePages)`): counts open pages per session and installs, on the
    Gradio app's StateHolder, an eviction that spares them (`keep_open_pages`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.open: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._installed = False

    def is_open(self, session: str) -> bool:
        with self._lock:
            return self.open[session] > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._installed:
            holder = getattr(scope.get("app"), "state_holder", None)
            if holder is not None:
                keep_open_pages(holder, self.is_open)
                self._installed = True
        session = heartbeat_session(scope)
        if session is None:
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.open[session] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.open[session] -= 1
                if self.open[session] <= 0:
                    del self.open[session]


def heartbeat_session(scope: Scope) -> str | None:
    """The session of a request for Gradio's heartbeat stream (GET .../heartbeat/<session>), else None."""
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return None
    head, found, session = scope.get("path", "").rpartition(HEARTBEAT)
    return session if found and head.endswith(API) and session and "/" not in session else None


def keep_open_pages(holder: Any, is_open: Callable[[str], bool]) -> None:
    """Replace `holder.update` (Gradio's StateHolder: marks a session used, then drops the least recently
    used past `capacity`) with one that drops the least recently used session without an open page first,
    never the session being used."""

    def update(session_id: str) -> None:
        with holder.lock:
            data = holder.session_data
            if session_id in data:
                data.move_to_end(session_id)
            while len(data) > holder.capacity:
                victim = next((s for s in data if s != session_id and not is_open(s)), None)
                if victim is None:
                    victim = next(iter(data))
                    if victim == session_id:
                        return
                del data[victim]
                holder.time_last_used.pop(victim, None)

    holder.update = update
