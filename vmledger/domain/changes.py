"""What an action's outcome changes on a server, declared as data in its lifecycle row.

A row's ``on_complete`` and ``on_fail`` map a server field to a :data:`Change`: a plain
value, or one of the few markers below that the Server aggregate resolves when it
records the outcome. The resolved changes keep the declared order: they are the
``changes`` of the outcome event, so the order is part of what is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Now:
    """The time of the outcome."""


@dataclass(frozen=True)
class ConfirmDeadline:
    """The time of the outcome plus the resize confirm window; None without a window."""


@dataclass(frozen=True)
class Param:
    """A parameter of the action's request (None when it was not given).

    ``skip_empty``: change nothing when it was not given (a resize that stays on its
    host has no ``source_host``)."""

    name: str
    skip_empty: bool = False


@dataclass(frozen=True)
class Clear:
    """None, when the field has a value; else nothing is changed (so the outcomes of
    servers that never had one record no change)."""


@dataclass(frozen=True)
class Field:
    """The server's own field as it was before the outcome.

    ``skip_empty``: change nothing when that field is empty (a revert restores the old
    flavor only when there is one).
    """

    name: str
    skip_empty: bool = False


NOW = Now()
CONFIRM_DEADLINE = ConfirmDeadline()
CLEAR = Clear()

#: what a field of a row's ``on_complete`` / ``on_fail`` may be set to
Change = Now | ConfirmDeadline | Param | Field | Clear | str | bool | None


def resolve(changes: Mapping[str, Change], *, server: object, at: datetime,
            params: Mapping[str, Any], confirm_window: timedelta | None = None
            ) -> dict[str, Any]:
    """The field values ``changes`` declare, for ``server`` at ``at``, in their order."""
    resolved: dict[str, Any] = {}
    for name, change in changes.items():
        if isinstance(change, Now):
            resolved[name] = at
        elif isinstance(change, ConfirmDeadline):
            resolved[name] = (at + confirm_window) if confirm_window else None
        elif isinstance(change, Param):
            if params.get(change.name) or not change.skip_empty:
                resolved[name] = params.get(change.name)
        elif isinstance(change, Clear):
            if getattr(server, name, None):  # absent from older histories
                resolved[name] = None
        elif isinstance(change, Field):
            # getattr with a default: a field added later is absent from older histories
            value = getattr(server, change.name, None)
            if value or not change.skip_empty:
                resolved[name] = value
        else:
            resolved[name] = change
    return resolved
