"""Query-string rules shared by the list calls, with Nova's messages.

Nova validates query strings with JSON schemas: ``single_param`` values may appear only
once, ``date-time`` values must parse as ISO 8601, and schemas with
``additionalProperties: false`` reject unknown parameters with a root-level error
(``Additional properties are not allowed ('x' was unexpected)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from starlette.datastructures import QueryParams

from vmledger.api.faults import ApiError
from vmledger.api.validation import invalid_query

#: oslo.utils ``bool_from_string`` accepted spellings
TRUE_STRINGS = ("1", "t", "true", "on", "y", "yes")
FALSE_STRINGS = ("0", "f", "false", "off", "n", "no")


def single(query: QueryParams, name: str) -> str | None:
    """The one value of ``name`` (None when absent); several values → 400."""
    values = query.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise invalid_query(name, values, f"{values!r} is too long")
    return values[0]


def last(query: QueryParams, name: str) -> str | None:
    """The last value of a repeatable parameter (Nova's ``multi_params`` keep the last)."""
    values = query.getlist(name)
    return values[-1] if values else None


def parse_isotime(text: str) -> datetime:
    """ISO 8601 (``Z``, an offset, or none = UTC) as an aware datetime; ValueError else."""
    value = text.strip()
    if not value:
        raise ValueError("empty time")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def time_param(name: str, text: str | None) -> datetime | None:
    """A ``date-time`` query parameter, or a 400 naming it."""
    if text is None:
        return None
    try:
        return parse_isotime(text)
    except ValueError:
        raise invalid_query(name, text, f"{text!r} is not a 'date-time'") from None


def time_window(query: QueryParams, *, before_allowed: bool, multi: bool = True
                ) -> tuple[datetime | None, datetime | None]:
    """``changes-since`` and (when allowed) ``changes-before``, checked against each other."""
    get = last if multi else single
    since = time_param("changes-since", get(query, "changes-since"))
    before = (time_param("changes-before", get(query, "changes-before"))
              if before_allowed else None)
    if since is not None and before is not None and before < since:
        raise ApiError(400, "The value of changes-since must be less than or equal to "
                            "changes-before.")
    return since, before


def reject_unknown(query: QueryParams, known: Iterable[str]) -> None:
    """400 for any parameter outside ``known`` (schemas with additionalProperties false)."""
    allowed = set(known)
    extra = sorted({k for k in query if k not in allowed})
    if extra:
        listed = ", ".join(repr(k) for k in extra)
        verb = "was" if len(extra) == 1 else "were"
        raise ApiError(400, f"Additional properties are not allowed ({listed} {verb} "
                            "unexpected)")


def bool_strict(value: str) -> bool:
    """oslo ``bool_from_string(strict=True)``; 400 ``Invalid input received`` otherwise."""
    lowered = value.strip().lower()
    if lowered in TRUE_STRINGS:
        return True
    if lowered in FALSE_STRINGS:
        return False
    acceptable = ", ".join(f"'{s}'" for s in sorted(TRUE_STRINGS + FALSE_STRINGS))
    raise ApiError(400, f"Invalid input received: Unrecognized value '{value}', acceptable "
                        f"values are: {acceptable}")


def bool_lenient(value: str, default: bool = False) -> bool:
    """oslo ``bool_from_string(default=...)``: unknown spellings give the default."""
    lowered = value.strip().lower()
    if lowered in TRUE_STRINGS:
        return True
    if lowered in FALSE_STRINGS:
        return False
    return default
