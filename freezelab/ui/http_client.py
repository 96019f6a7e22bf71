"""A browser session over raw HTTP, as the page itself talks to the server: what the load tests drive.

Gradio's own client (gradio_client) spends tens of milliseconds of CPU per call on its side; on a
small box that shares its cores with the server, a class of 30 such clients measures the clients
as much as the server. This one does what the page does and nothing more, with the standard
library only: it keeps a heartbeat connection open (`/gradio_api/heartbeat/<session>`: the server
runs its unload handlers and forgets the session when it closes), joins the queue
(`POST /gradio_api/queue/join`) and reads the answer from the session's event stream
(`GET /gradio_api/queue/data`, server-sent events), one persistent connection each. It keeps the
last value of every output component, as the page does, since an event may update only some.

A dependency is named by its `api_name` or by the component event that triggers it (the tree's
`module_toggle`, which has no API name), as listed in the app's `/config`.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

API = "/gradio_api"
TIMEOUT_S = 300.0


class AppError(RuntimeError):
    """The server refused a request or reported an error for an event."""


@dataclass(frozen=True)
class Dependency:
    fn_index: int
    trigger_id: int | None
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class AppConfig:
    """The dependencies and components of a running app, from its /config."""

    host: str
    port: int
    by_name: dict[str, Dependency]
    elem_ids: dict[str, int]     # the page's elem_id -> component id

    @classmethod
    def read(cls, url: str) -> AppConfig:
        with urllib.request.urlopen(url.rstrip("/") + "/config", timeout=30) as r:
            cfg = json.load(r)
        parsed = urllib.parse.urlsplit(url)
        by_name: dict[str, Dependency] = {}
        for d in cfg["dependencies"]:
            targets = d.get("targets") or [[None, None]]
            dep = Dependency(d["id"], targets[0][0], tuple(d["inputs"]), tuple(d["outputs"]))
            if d.get("api_name"):
                by_name.setdefault(d["api_name"], dep)
            for target, trigger in targets:
                by_name.setdefault(f"{target}.{trigger}", dep)
        elem_ids = {c["props"]["elem_id"]: c["id"] for c in cfg["components"] if c.get("props", {}).get("elem_id")}
        return cls(parsed.hostname or "127.0.0.1", parsed.port or 80, by_name, elem_ids)

    def dependency(self, name: str) -> Dependency:
        """By api_name (`preset_stage2`), or `ELEM_ID.event` for an event without one (`fl-tree-box.module_toggle`)."""
        if name in self.by_name:
            return self.by_name[name]
        elem, _, trigger = name.rpartition(".")
        if elem in self.elem_ids and f"{self.elem_ids[elem]}.{trigger}" in self.by_name:
            return self.by_name[f"{self.elem_ids[elem]}.{trigger}"]
        raise KeyError(f"no dependency {name!r} in the app's config")


@dataclass
class Reply:
    """What one event sent back: the values it updated (component id -> value), or the error."""

    values: dict[int, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    received_bytes: int = 0


class HttpSession:
    """One browser tab: its own session hash, heartbeat and event stream; one event at a time. With
    `heartbeat=False`, a client that sends requests without ever opening a page (no heartbeat stream)."""

    def __init__(self, config: AppConfig, heartbeat: bool = True) -> None:
        self.config = config
        self.hash = secrets.token_hex(6)
        self.shown: dict[int, Any] = {}   # the page: each component's last value
        self._join = self._connect()
        self._stream = self._connect()
        self._heartbeat = self._connect()
        self._closed = threading.Event()
        if heartbeat:
            self._heartbeat.request("GET", f"{API}/heartbeat/{self.hash}")
            self._reader = threading.Thread(target=self._drain_heartbeat, daemon=True)
            self._reader.start()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.config.host, self.config.port, timeout=TIMEOUT_S)

    def _drain_heartbeat(self) -> None:
        """Read the heartbeat stream until the tab closes. Its headers come with the server's first
        beat (up to GRADIO_HEARTBEAT_INTERVAL later), so they are awaited here, not by the constructor."""
        try:
            beat = self._heartbeat.getresponse()
            while not self._closed.is_set() and beat.readline():
                pass
        except (OSError, AttributeError, ValueError, http.client.HTTPException):  # closed under it by close()
            pass

    def call(self, name: str, data: list[Any], event_data: Any = None) -> Reply:
        """Run dependency `name` with `data` for its inputs (None for a gr.State: the server keeps it)."""
        dep = self.config.dependency(name)
        t0 = time.perf_counter()
        body = json.dumps({"data": data, "event_data": event_data, "fn_index": dep.fn_index,
                           "trigger_id": dep.trigger_id, "session_hash": self.hash}).encode()
        joined, raw = self._post(f"{API}/queue/join", body)
        if joined.status != 200:
            return Reply(error=f"HTTP {joined.status}: {raw[:3000].decode(errors='replace')}",
                         seconds=time.perf_counter() - t0)
        event_id = json.loads(raw)["event_id"]
        reply = self._await(event_id, dep)
        reply.seconds = time.perf_counter() - t0
        return reply

    def _post(self, path: str, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        """POST on the kept connection; once more on a fresh one when the server had closed it (it
        closes idle keep-alive connections after a few seconds, as browsers expect)."""
        for attempt in (1, 2):
            try:
                self._join.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = self._join.getresponse()
                return resp, resp.read()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self._join.close()
                self._join = self._connect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _open_stream(self) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            try:
                self._stream.request("GET", f"{API}/queue/data?session_hash={self.hash}")
                return self._stream.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self._stream.close()
                self._stream = self._connect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _await(self, event_id: str, dep: Dependency) -> Reply:
        resp = self._open_stream()
        reply = Reply()
        try:
            for line in iter(resp.readline, b""):
                reply.received_bytes += len(line)
                if not line.startswith(b"data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed" and msg.get("event_id") == event_id:
                    self._completed(msg, dep, reply)
                if msg.get("msg") in ("close_stream", "unexpected_error"):
                    reply.error = reply.error or msg.get("message")
                    break
        finally:
            resp.read()  # to the end of the stream: the connection is reused for the next event
        return reply

    def _completed(self, msg: dict[str, Any], dep: Dependency, reply: Reply) -> None:
        if not msg.get("success"):
            reply.error = str((msg.get("output") or {}).get("error") or "the event failed")
            return
        for comp, value in zip(dep.outputs, msg["output"]["data"]):
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "value" not in value:
                    continue  # not updated: the page keeps what it shows
                value = value["value"]
            reply.values[comp] = value
        self.shown.update(reply.values)

    def upload(self, name: str, content: bytes) -> dict[str, Any]:
        """Upload a file as the page does before a file input's event (`POST /gradio_api/upload`,
        multipart); returns the FileData value to send for that input."""
        boundary = secrets.token_hex(16)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        conn = self._connect()
        try:
            conn.request("POST", f"{API}/upload", body=body,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise AppError(f"upload refused: HTTP {resp.status}: {raw[:3000].decode(errors='replace')}")
        return {"path": json.loads(raw)[0], "orig_name": name, "size": len(content),
                "meta": {"_type": "gradio.FileData"}}

    def value(self, elem_id: str) -> Any:
        """What the page shows now in the component with this elem_id."""
        return self.shown.get(self.config.elem_ids[elem_id])

    def close(self) -> None:
        """Close the tab: the heartbeat ends, so the server runs its unload handlers."""
        self._closed.set()
        if self._heartbeat.sock is not None:
            # wakes the reader blocked in readline: closing alone would wait for its lock until the next beat
            try:
                self._heartbeat.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for conn in (self._heartbeat, self._join, self._stream):
            conn.close()
