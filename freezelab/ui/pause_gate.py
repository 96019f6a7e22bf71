"""Public mode's answer to paused sessions, in front of Gradio (an ASGI middleware).

A browser session the throttle has paused (freezelab.throttle) gets no work done, but a client that
never waits would send refused requests back to back, each one costing the server its HTTP, queue and
handler work. So each of its requests to join Gradio's queue is held Throttle.delay_s (an asyncio sleep
on the event loop, holding no thread and no queue slot) and then answered here, HTTP 429 with the
throttle's message as `detail` (the page shows it as an error toast, as it shows any refused queue
request), without reaching Gradio's queue: a refusal passed on would wait for its listener's one slot
behind whatever that listener is running, and every other session's events of that listener would wait
behind the refusal. Requests of sessions that are not paused go straight on; the gate reads only the
session hash of a queue request's JSON body, which it hands on unchanged. (The handlers refuse a paused
session too, for a pause that begins after its request passed the gate: freezelab.ui.shared.)
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from freezelab.throttle import Throttle, ThrottledError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JOIN = "/queue/join"      # Gradio's route for every queued event (the page's and API clients')
TOO_MANY = 429            # HTTP Too Many Requests: Gradio's client shows a non-200 join's `detail` as the error
MAX_READ = 1 << 20        # bodies read to find the session (a queue request is a few KB; Gradio caps uploads)


class PauseGate:
    """ASGI middleware that holds, then refuses, paused sessions' queue requests
    (`Middleware(PauseGate, throttle=...)`)."""

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
            try:
                self.throttle.admit(client)
            except ThrottledError as err:
                await refuse(send, str(err), self.throttle.paused_for(client))
                return

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self.app(scope, replay, send)


async def refuse(send: Send, message: str, retry_s: float) -> None:
    """Answer a queue request with HTTP 429 and `message` as its detail (what Gradio's client shows)."""
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", str(max(1, math.ceil(retry_s))).encode())]
    await send({"type": "http.response.start", "status": TOO_MANY, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def session_of(body: bytes) -> str | None:
    """The session hash of a queue request's JSON body, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    session = data.get("session_hash") if isinstance(data, dict) else None
    return session if isinstance(session, str) and session else None
