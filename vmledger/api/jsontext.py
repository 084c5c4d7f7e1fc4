"""Request JSON and URLs checked once, before any handler sees them.

:func:`decode_json` parses a body and refuses what would otherwise surface later as a
5xx: nesting deeper than :data:`MAX_DEPTH` (the parser's recursion limit is near 1,000,
and every later walk of the value recurses too), and strings or keys that are not valid
Unicode text (a lone surrogate, ``"\\ud800"``, is valid JSON but cannot be encoded as
UTF-8, so it fails when echoed into a message or saved in an event) or that hold a NUL
character (PostgreSQL's text cannot store one, so it fails when saved or queried).
:func:`url_problem` does the same for the percent-decoded path and query string.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from vmledger.api.faults import MALFORMED_BODY

#: the deepest nesting of arrays and objects a request body may have (Nova's bodies, a
#: server create with block devices and hints included, are a few levels deep)
MAX_DEPTH = 32

TOO_DEEP = f"{MALFORMED_BODY}: nested deeper than {MAX_DEPTH} levels."
NOT_TEXT = f"{MALFORMED_BODY}: a string is not valid Unicode text."
HOLDS_NUL = f"{MALFORMED_BODY}: a string holds a NUL character."
MALFORMED_URL = "Malformed request URL: not valid UTF-8."
URL_HOLDS_NUL = "Malformed request URL: it holds a NUL character."


class BodyError(ValueError):
    """A body that is not acceptable JSON; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def text_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable text (a lone surrogate, which UTF-8 cannot encode,
    or a NUL character), or None."""
    if "\x00" in value:
        return HOLDS_NUL
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return NOT_TEXT
    return None


def check_json(value: Any) -> None:
    """Raise :class:`BodyError` if ``value`` nests too deep or holds a string or key that
    is not acceptable text. Iterative, so no depth can exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                raise BodyError(problem)
        elif isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise BodyError(TOO_DEEP)
            for key, member in item.items():
                problem = text_problem(key)
                if problem is not None:
                    raise BodyError(problem)
                stack.append((member, depth + 1))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise BodyError(TOO_DEEP)
            stack.extend((member, depth + 1) for member in item)


def decode_json(raw: bytes) -> Any:
    """The JSON value of ``raw``, checked by :func:`check_json`; :class:`BodyError` if
    it is not JSON, nests too deep or is not valid text."""
    try:
        value = json.loads(raw)
    except RecursionError:  # deeper than the parser goes: deeper than MAX_DEPTH too
        raise BodyError(TOO_DEEP) from None
    except ValueError:  # includes UnicodeDecodeError
        raise BodyError(MALFORMED_BODY) from None
    check_json(value)
    return value


def _raw_problem(raw: bytes) -> str | None:
    decoded = unquote_to_bytes(raw) if b"%" in raw else raw
    if b"\x00" in decoded:
        return URL_HOLDS_NUL
    if decoded.isascii():
        return None
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return MALFORMED_URL
    return None


def url_problem(raw_path: bytes, query_string: bytes) -> str | None:
    """Why a request's path or query cannot be read as text (percent-decoded bytes that
    are not UTF-8, which would otherwise be replaced by U+FFFD, or a NUL), or None."""
    return _raw_problem(raw_path) or _raw_problem(query_string)

