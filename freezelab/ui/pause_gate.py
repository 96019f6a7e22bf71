"""Public mode's hold on paused sessions, in front of Gradio (an ASGI middleware).

A browser session the throttle has paused (freezelab.throttle) is refused by every handler at once,
but a client that never waits would then send refused requests back to back, each one costing the
server its HTTP, queue and handler work. So its requests to join Gradio's queue are held back
Throttle.delay_s first: an asyncio sleep on the event loop, holding no thread and no queue slot (a
sleep inside a handler would hold its listener's one slot, and every other session's events of that
listener would wait behind it). Requests of sessions that are not paused go straight on; the gate
reads only the session hash of a queue request's JSON body, which it hands on unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from freezelab.throttle import Throttle

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JOIN = "/queue/join"      # Gradio's route for every queued event (the page's and API clients')
MAX_READ = 1 << 20        # bodies read to find the session (a queue request is a few KB; Gradio caps uploads)


class PauseGate:
    """ASGI middleware holding back paused sessions' queue requests (`Middleware(PauseGate, throttle=...)`)."""

    def __init__(self, app: ASGIApp, throttle: Throttle) -> None:
        self.app, self.throttle = app, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith(JOIN):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        body, more = b"", True
        while more and len(body) <= MAX_READ:
            message = await receive()
            read.append(message)
            if message.get("type") != "http.request":
                break
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
        client = session_of(body) if not more else None
        if client is not None and self.throttle.paused_for(client) > 0:
            await asyncio.sleep(self.throttle.delay_s)

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self.app(scope, replay, send)


def session_of(body: bytes) -> str | None:
    """The session hash of a queue request's JSON body, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    session = data.get("session_hash") if isinstance(data, dict) else None
    return session if isinstance(session, str) and session else None
