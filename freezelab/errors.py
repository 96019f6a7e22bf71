"""User-facing errors: each carries one clear message and no traceback is shown for it."""

from __future__ import annotations


class FreezelabError(Exception):
    """Base class: bad input that the user can fix. `str(err)` is the message to show."""


class LimitError(FreezelabError):
    """The request goes over a bound this server sets on the work one request may cause (a time
    budget, a repetition count, a size, a public-mode limit). Public mode counts these against the
    browser session that sent them (freezelab.throttle)."""


class SourceError(FreezelabError):
    """A model could not be found, read or built."""


class NotLlavaError(SourceError):
    """The config is valid but not a vision-language model transformers builds."""


class SelectorError(FreezelabError):
    """A selector is malformed or matches nothing."""


class SelectorLimitError(SelectorError, LimitError):
    """A selector goes over a bound: its regex's size, or its (or its plan's) time budget."""


class PlanError(FreezelabError):
    """A plan (file, rule list or preset) is malformed."""


class PlanLimitError(PlanError, LimitError):
    """A plan goes over a bound: its size, its rule count or its time budget."""


class SimulationError(FreezelabError):
    """The simulated training step cannot run: bad input, or the real step would fail too."""


class Cancelled(FreezelabError):
    """A run's cancel flag was set: it stopped where it checked (freezelab.cancellation)."""


class SimulationCancelled(Cancelled):
    """The caller's `cancel()` returned True: the simulation stopped at a phase or inside one."""
