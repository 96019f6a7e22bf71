"""The dashboard's components by id, kept in one place (no gradio here).

Each `create_*` builder registers the components it makes under ids `panel.name`
(`plan.rules`, `memory.batch`) together with the function that wires its events;
a panel reaches another panel's components only through their ids. Handlers say
what the page shows as {id: value}; the registry turns that into
{component: value}, and Gradio updates those components and leaves every other
output of the event as it is.

What a view shows is declared once, on its dataclass fields (`shown("plan.rules")`):
the outputs of an event are derived from the class (`shown_ids`), its values from
an instance (`shown_values`), so the two can never disagree.
"""

from __future__ import annotations

import difflib
import functools
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import field, fields
from typing import Any

ELEM = "freezelab.elem"     # field metadata: the id of the component that shows the field
PARTS = "freezelab.parts"   # field metadata: a dataclass whose own fields are shown

Wiring = Callable[[Any], None]  # called with the dashboard context (freezelab.ui.shared.Shared)


class _Cleared:
    def __repr__(self) -> str:
        return "CLEARED"


# A shown value that empties its component (a section's content while it is closed). A value left out
# (None) keeps what the component shows, which costs Gradio more: it rebuilds that component's config
# on every event.
CLEARED: Any = _Cleared()


def initial(value: Any) -> Any:
    """A shown value as a component's value when the page is built (CLEARED: empty)."""
    return None if value is CLEARED else value


class RegistryError(LookupError):
    """A component id registered twice, or asked for but never registered: a wiring mistake."""


def elem_id(panel: str, name: str) -> str:
    """The id of component `name` of `panel`."""
    return f"{panel}.{name}"


def shown(elem_id: str, **kwargs: Any) -> Any:
    """A dataclass field shown by the component registered under `elem_id`. Field order is
    output order: API clients receive the values in it."""
    return field(metadata={ELEM: elem_id}, **kwargs)


def shown_within(**kwargs: Any) -> Any:
    """A dataclass field holding another dataclass whose shown fields are shown in its place."""
    return field(metadata={PARTS: True}, **kwargs)


@functools.cache
def shown_ids(cls: type) -> tuple[str, ...]:
    """The ids a view class fills, in field order."""
    return tuple(i for ids in field_ids(cls).values() for i in ids)


@functools.cache
def field_ids(cls: type) -> dict[str, tuple[str, ...]]:
    """{field name: the ids it fills} of a view class's shown fields, in field order."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[str, ...]] = {}
    for f in fields(cls):
        if ELEM in f.metadata:
            out[f.name] = (f.metadata[ELEM],)
        elif f.metadata.get(PARTS):
            out[f.name] = shown_ids(_dataclass_of(hints[f.name]))
    return out


def _dataclass_of(hint: Any) -> type:
    """The class of a `shown_within` field's type (`MemoryView`, or `MemoryView | None`)."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return options[0]


def shown_values(view: Any) -> dict[str, Any]:
    """{id: value} of a view's shown fields. A field that is None (or a part that is None) leaves
    its components as they are (a chart with nothing to draw yet, a part the event did not change)."""
    out: dict[str, Any] = {}
    for f in fields(view):
        value = getattr(view, f.name)
        if ELEM in f.metadata:
            if value is not None:
                out[f.metadata[ELEM]] = value
        elif f.metadata.get(PARTS) and value is not None:
            out.update(shown_values(value))
    return out


class Registry:
    """Component ids -> components, and the panels' wirings (LLaMA-Factory's webui Manager, plus
    deferred wiring: a panel may wire to components that are laid out after it)."""

    def __init__(self) -> None:
        self._elems: dict[str, Any] = {}
        self._wirings: list[Wiring] = []

    def add(self, panel: str, elems: Mapping[str, Any], wire: Wiring | None = None) -> None:
        """Register `elems` as `panel.name`; `wire` runs once every panel is laid out."""
        new = {elem_id(panel, name): elem for name, elem in elems.items()}
        taken = sorted(set(new) & set(self._elems))
        if taken:
            raise RegistryError(f"component id(s) registered twice: {', '.join(taken)}")
        self._elems.update(new)
        if wire is not None:
            self._wirings.append(wire)

    def __getitem__(self, elem_id: str) -> Any:
        try:
            return self._elems[elem_id]
        except KeyError:
            close = difflib.get_close_matches(elem_id, self._elems, n=3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise RegistryError(f"no component is registered as {elem_id!r}{hint}") from None

    def __contains__(self, elem_id: object) -> bool:
        return elem_id in self._elems

    def __iter__(self) -> Iterator[str]:
        return iter(self._elems)

    def __len__(self) -> int:
        return len(self._elems)

    def components(self, ids: Iterable[str]) -> list[Any]:
        """The components of `ids`, in that order: an event's inputs or outputs."""
        return [self[i] for i in ids]

    def values(self, shown: Mapping[str, Any]) -> dict[Any, Any]:
        """{id: value} from a handler as {component: value}, the form Gradio accepts from an event
        (CLEARED: None, an empty component)."""
        return {self[i]: initial(value) for i, value in shown.items()}

    def wire(self, context: Any) -> None:
        """Run every panel's wiring, in the order the panels were registered."""
        for wiring in self._wirings:
            wiring(context)
