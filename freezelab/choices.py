"""Choices are `str` enums (see workload.Dtype, plans.Action, selectors.SelectorKind): code names a
member, so a misspelt choice is an AttributeError where it is written, and a member is its own string
value in JSON, f-strings and argparse. Input arrives as plain strings; `member` reads it."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


def member(choice: type[E], value: object) -> E | None:
    """The member of `choice` whose value `value` is (a plain string, or a member of any str enum), or None."""
    if not isinstance(value, str):
        return None
    try:
        return choice(value)
    except ValueError:
        return None


def spelled(choice: type[StrEnum]) -> str:
    """The values of `choice` for a message: 'a or b', 'a, b or c'."""
    values = [c.value for c in choice]
    return " or ".join(values) if len(values) < 3 else f"{', '.join(values[:-1])} or {values[-1]}"
