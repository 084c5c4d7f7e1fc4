"""Request JSON and URLs checked once, before any handler sees them.

:func:`decode_json` parses a body and refuses what would otherwise surface later as a
5xx: nesting deeper than :data:`MAX_DEPTH` (the parser's recursion limit is near 1,000,
and every later walk of the value recurses too), and strings or keys that are not valid
Unicode text (a lone surrogate, ``"\\ud800"``, is valid JSON but cannot be encoded as
UTF-8, so it fails when echoed into a message or saved in an event).
:func:`url_problem` does the same for the percent-decoded path and query string.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from vmledger.api.faults import MALFORMED_BODY

#: the deepest nesting of arrays and objects a request body may have (Nova's largest
#: bodies, a server create with block devices and hints, are five levels deep)
MAX_DEPTH = 32

TOO_DEEP = f"{MALFORMED_BODY}: nested deeper than {MAX_DEPTH} levels."
NOT_TEXT = f"{MALFORMED_BODY}: a string is not valid Unicode text."
MALFORMED_URL = "Malformed request URL: not valid UTF-8."


class BodyError(ValueError):
    """A body that is not acceptable JSON; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_text(value: str) -> bool:
    """Whether ``value`` can be encoded as UTF-8 (holds no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json(value: Any) -> None:
    """Raise :class:`BodyError` if ``value`` nests too deep or holds a string or key that
    is not valid text. Iterative, so no depth can exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not is_text(item):
                raise BodyError(NOT_TEXT)
        elif isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise BodyError(TOO_DEEP)
            for key, member in item.items():
                if not is_text(key):
                    raise BodyError(NOT_TEXT)
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


def _is_utf8(raw: bytes) -> bool:
    if b"%" not in raw and raw.isascii():
        return True
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def url_problem(raw_path: bytes, query_string: bytes) -> str | None:
    """Why a request's path or query cannot be read as text (percent-decoded bytes that
    are not UTF-8, which would otherwise be replaced by U+FFFD), or None."""
    if _is_utf8(raw_path) and _is_utf8(query_string):
        return None
    return MALFORMED_URL

