"""Backoff for browser sessions whose requests keep going over this server's limits (public mode).

Every limit (freezelab.errors.LimitError: a run's CPU budget, a regex's size, a selector's or a
plan's time budget, a public-mode refusal) answers at once, but a client that never pauses can
still send refused requests back to back, and each one costs the server its HTTP, queue and
checking work: four such clients took a share of the server's one Python thread that an ordinary
class then queued behind. A session whose requests hit a limit STRIKES times within WINDOW_S
seconds is paused for PAUSE_S seconds: every request it sends meanwhile is refused with one
message that names the limit, each of its requests held DELAY_S seconds and then answered in
front of Gradio's queue (freezelab.ui.pause_gate: an asyncio sleep, no thread and no queue slot
held, and the refusal waits for no handler), so a client that never pauses sends a few requests
a second instead of hundreds. A session paused again within REPEAT_S of its last pause's end is
paused twice as long as the last time, up to MAX_PAUSE_S: a client that only waits out its pauses
spends most of its time paused. When a paused session's tab closes, the page Gradio keeps for a
reconnecting tab goes at once (the unload handler, freezelab.ui.verify_panel.session_release).

A legitimate user rarely hits a limit twice in a row: each refusal says what to change. The
bound is per browser session; `max_clients` bounds the records kept (the least recently seen go
first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from freezelab.errors import FreezelabError, LimitError

STRIKES = 3          # refusals for a limit ...
WINDOW_S = 60.0      # ... within this many seconds pause the session
PAUSE_S = 30.0       # for this long
REPEAT_S = 600.0     # paused again within this long of the last pause's end: twice the last pause ...
MAX_PAUSE_S = 960.0  # ... up to this long (30 s, 60, 120, ... 960)
DELAY_S = 0.3        # a paused session's request is held this long, then refused in front of the queue (pause_gate)
MAX_CLIENTS = 4096   # sessions remembered; a record is a few hundred bytes


class ThrottledError(FreezelabError):
    """The session is paused after repeated refusals; not itself counted as one."""


@dataclass
class _Record:
    refusals: deque[float] = field(default_factory=deque)
    paused_until: float = 0.0
    pause_s: float = 0.0       # the length of the last pause (0: never paused)


class Throttle:
    """Thread-safe strike counts and pauses, keyed by a client id (a browser session's hash)."""

    def __init__(self, strikes: int = STRIKES, window_s: float = WINDOW_S, pause_s: float = PAUSE_S,
                 delay_s: float = DELAY_S, max_clients: int = MAX_CLIENTS, repeat_s: float = REPEAT_S,
                 max_pause_s: float = MAX_PAUSE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.strikes, self.window_s, self.pause_s, self.delay_s = strikes, window_s, pause_s, delay_s
        self.repeat_s, self.max_pause_s = repeat_s, max_pause_s
        self.max_clients = max_clients
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def paused_for(self, client: str) -> float:
        """Seconds until `client` may send again (0 when it is not paused)."""
        return self._pause(client)[0]

    def _pause(self, client: str) -> tuple[float, float]:
        """(seconds left of `client`'s pause, that pause's length); (0, 0) for a client never paused."""
        with self._lock:
            record = self._records.get(client)
            if record is None:
                return 0.0, 0.0
            return max(0.0, record.paused_until - self._clock()), record.pause_s

    def was_paused(self, client: str) -> bool:
        """Whether `client` has been paused (and is still remembered)."""
        return self._pause(client)[1] > 0

    def admit(self, client: str) -> None:
        """Return, or, while `client` is paused, raise ThrottledError (at once: the delay is the gate's)."""
        left, pause = self._pause(client)
        if left <= 0:
            return
        raise ThrottledError(f"this session's last {self.strikes} requests within {self.window_s:.0f} s went over "
                             f"this server's limits, so it is paused for {pause:.0f} s ({left:.0f} s left); "
                             "change what the refusals named, then try again")

    def refused(self, client: str, err: BaseException) -> bool:
        """Count `err` against `client` if it is a LimitError; True when this pauses the session."""
        if not isinstance(err, LimitError):
            return False
        now = self._clock()
        with self._lock:
            record = self._records.pop(client, None) or _Record()
            self._records[client] = record  # most recently seen last
            while len(self._records) > self.max_clients:
                self._records.popitem(last=False)
            record.refusals.append(now)
            while record.refusals and record.refusals[0] <= now - self.window_s:
                record.refusals.popleft()
            if len(record.refusals) < self.strikes:
                return False
            record.refusals.clear()
            again = record.pause_s > 0 and now - record.paused_until < self.repeat_s
            record.pause_s = min(self.max_pause_s, 2 * record.pause_s) if again else self.pause_s
            record.paused_until = now + record.pause_s
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
