"""Backoff for browser sessions whose requests keep going over this server's limits (public mode).

Every limit (freezelab.errors.LimitError: a run's CPU budget, a regex's size, a selector's or a
plan's time budget, a public-mode refusal) answers at once, but a client that never pauses can
still send refused requests back to back, and each one costs the server its HTTP, queue and
checking work: four such clients took a share of the server's one Python thread that an ordinary
class then queued behind. A session whose requests hit a limit STRIKES times within WINDOW_S
seconds is paused for PAUSE_S seconds: every request it sends meanwhile is refused with one
message that names the limit, and that answer is held back DELAY_S seconds (a sleeping thread,
no CPU), so a client that never pauses sends about one request a second instead of dozens.

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
DELAY_S = 0.5        # a paused session's request is answered after this long (under the 1 s a refusal may take)
MAX_CLIENTS = 4096   # sessions remembered; a record is a few hundred bytes


class ThrottledError(FreezelabError):
    """The session is paused after repeated refusals; not itself counted as one."""


@dataclass
class _Record:
    refusals: deque[float] = field(default_factory=deque)
    paused_until: float = 0.0


class Throttle:
    """Thread-safe strike counts and pauses, keyed by a client id (a browser session's hash)."""

    def __init__(self, strikes: int = STRIKES, window_s: float = WINDOW_S, pause_s: float = PAUSE_S,
                 delay_s: float = DELAY_S, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.strikes, self.window_s, self.pause_s, self.delay_s = strikes, window_s, pause_s, delay_s
        self.max_clients = max_clients
        self._clock, self._sleep = clock, sleep
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def paused_for(self, client: str) -> float:
        """Seconds until `client` may send again (0 when it is not paused)."""
        with self._lock:
            record = self._records.get(client)
            return 0.0 if record is None else max(0.0, record.paused_until - self._clock())

    def admit(self, client: str, delay: bool = True) -> None:
        """Return at once, or, while `client` is paused, raise ThrottledError (after `delay_s` with `delay`)."""
        left = self.paused_for(client)
        if left <= 0:
            return
        if delay:
            self._sleep(self.delay_s)
        raise ThrottledError(f"this session's last {self.strikes} requests within {self.window_s:.0f} s went over "
                             f"this server's limits, so it is paused for {self.pause_s:.0f} s ({left:.0f} s left); "
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
            record.paused_until = now + self.pause_s
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
