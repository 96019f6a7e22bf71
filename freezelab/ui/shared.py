"""What every panel's wiring shares: the app, the component registry and the page, and the one
wrapper that turns a handler's result (or its error) into component values."""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from freezelab.errors import FreezelabError
from freezelab.throttle import Throttle, ThrottledError
from freezelab.ui.handlers import ALL_PARTS, STATE, STATUS, App, view_ids
from freezelab.ui.registry import Registry, shown_values

GPU_CONCURRENCY = "device"   # simulate and the sanity step share one slot: one at a time
# Plan files: the costliest request that is not a run (a 1,000-rule plan takes a quarter of a second of
# CPU to check), and a rare one for a class: one at a time, so that sessions uploading plans together
# take one thread's share of the server, not one each.
PLAN_FILE_CONCURRENCY = "plan_file"
# Selector previews: each is bounded (a quarter of a second of matching), but a client opening many sessions
# could run one per session side by side; two at a time server-wide keep them to a bounded share of the
# server's Python thread.
PREVIEW_CONCURRENCY, PREVIEW_SLOTS = "preview", 2


def error_text(err: Exception) -> str:
    return f"⚠️ **{err}**"


def warn(err: Exception) -> None:
    """The error as a toast. Gradio renders toast text as HTML, and messages quote user input
    (selectors, paths): escaped, a name like `<img onerror=...>` shows as text."""
    gr.Warning(html.escape(str(err), quote=False))


@dataclass
class Shared:
    app: App
    ui: Registry
    demo: gr.Blocks

    @property
    def throttle(self) -> Throttle | None:
        """Public mode: the app's record of sessions that keep hitting limits (freezelab.throttle)."""
        return self.app.throttle

    @property
    def state(self) -> gr.State:
        return self.ui[STATE]

    def outputs(self, *extra: str, parts: tuple[str, ...] = ALL_PARTS) -> list[Any]:
        """The components a View with these `parts` fills, then those of `extra` ids: an event's outputs."""
        return self.ui.components((*view_ids(parts), *extra))

    def show(self, make: Callable[[], Any]) -> dict[Any, Any]:
        """Run a handler returning a view (a dataclass with shown fields: a View, a WorkloadRefused),
        or {id: value} (a View's values and more); on a FreezelabError keep every component as it
        is and show the message. A paused session's requests are refused in front of the queue
        (freezelab.ui.pause_gate); one whose pause began after its request passed there is refused here,
        before the handler runs, as an error: a value for the status alone would make Gradio rebuild every
        other output component of the event (tens of ms of the server's CPU for a request that does nothing)."""
        try:
            self.admit()
        except ThrottledError as err:
            raise gr.Error(html.escape(str(err), quote=False), title="Paused", print_exception=False) from None
        try:
            result = make()
        except FreezelabError as err:
            self.refused(err)
            warn(err)
            return self.ui.values({STATUS: error_text(err)})
        return self.ui.values(result if isinstance(result, Mapping) else shown_values(result))

    def admit(self) -> None:
        """Public mode: ThrottledError while this event's session is paused (a pause that began after its
        request passed freezelab.ui.pause_gate, which refuses the rest)."""
        client = client_id()
        if self.throttle is not None and client is not None:
            self.throttle.admit(client)

    def refused(self, err: Exception) -> None:
        """Count a refusal against this event's session (only limits count: freezelab.throttle)."""
        client = client_id()
        if self.throttle is not None and client is not None:
            self.throttle.refused(client, err)

    def listen(self, trigger: Callable[..., Any], fn: Callable[..., Mapping[Any, Any]], inputs: Any, outputs: Any,
               **kwargs: Any) -> Any:
        """`trigger(fn, inputs, outputs, **kwargs)` (a component's event method) for a handler that returns
        {component: value}, with each value turned into what the page receives (the component's own
        postprocess) in the handler's worker thread: Gradio would otherwise hop to a thread of its own for
        each output (about 90 us of CPU each, 28 outputs for a preset or a tree toggle)."""

        @functools.wraps(fn)
        def sent(*args: Any, **kw: Any) -> dict[Any, Any]:
            return serialized(fn(*args, **kw))

        return trigger(sent, inputs, outputs, postprocess=False, **kwargs)

    def forget_paused(self, client: str) -> bool:
        """A browser session ended: if the throttle ever paused it, the page Gradio keeps for a reconnecting
        tab (each output's last value, 1-2 MB with a 7B model) goes now, not after an hour or MAX_SESSIONS
        newer sessions: what an attacker's sessions leave behind. True when a page went."""
        if self.throttle is None or not self.throttle.was_paused(client):
            return False
        holder = self.demo.state_holder
        with holder.lock:
            gone = holder.session_data.pop(client, None) is not None
            holder.time_last_used.pop(client, None)
        return gone

    def refusal(self, check: Callable[[], None]) -> str | None:
        """The message of a check that refuses a run (a paused session's first), or None when it passes."""
        try:
            self.admit()
            check()
        except FreezelabError as err:
            self.refused(err)
            return str(err)
        return None


def serialized(values: Mapping[Any, Any]) -> dict[Any, Any]:
    """{component: value} as Gradio's postprocess step would send it (a State's value and an update as they are)."""
    from gradio.data_classes import GradioModel, GradioRootModel
    from gradio.utils import is_prop_update

    out: dict[Any, Any] = {}
    for block, value in values.items():
        if block.stateful or is_prop_update(value):
            out[block] = value
            continue
        sent = block.postprocess(value)
        out[block] = sent.model_dump() if isinstance(sent, (GradioModel, GradioRootModel)) else sent
    return out


def client_id() -> str | None:
    """The browser session of the event being served (Gradio's session hash), or None outside an event."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) or None
