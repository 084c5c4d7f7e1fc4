"""Request validation with Nova's messages.

Nova validates bodies and query strings with JSON schemas and reports the first error
as ``Invalid input for field/attribute <field>. Value: <value>. <reason>`` (bodies) or
``Invalid input for query parameters <param>. Value: <value>. <reason>`` (queries).
These helpers check the same rules for the fields vmledger serves.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from vmledger.api.faults import ApiError

NAME_MAX = 255


def invalid_field(field: str, value: Any, reason: str) -> ApiError:
    return ApiError(400, f"Invalid input for field/attribute {field}. Value: {value}. {reason}")


def invalid_query(param: str, value: Any, reason: str) -> ApiError:
    return ApiError(400, f"Invalid input for query parameters {param}. Value: {value}. "
                         f"{reason}")


def require_object(value: Any, field: str | None) -> dict[str, Any]:
    """The value as a JSON object, or a 400 naming the field."""
    if not isinstance(value, dict):
        reason = f"{value!r} is not of type 'object'"
        if field is None:
            raise ApiError(400, reason)
        raise invalid_field(field, value, reason)
    return value


def require_keys(obj: Mapping[str, Any], field: str, keys: Iterable[str]) -> None:
    for key in keys:
        if key not in obj:
            raise invalid_field(field, dict(obj), f"'{key}' is a required property")


def no_other_keys(obj: Mapping[str, Any], field: str, allowed: Iterable[str]) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        listed = ", ".join(repr(k) for k in extra)
        verb = "was" if len(extra) == 1 else "were"
        raise invalid_field(field, dict(obj),
                            f"Additional properties are not allowed ({listed} {verb} "
                            "unexpected)")


def string(value: Any, field: str, *, min_length: int = 0, max_length: int | None = None,
           nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        kinds = "['string', 'null']" if nullable else "'string'"
        raise invalid_field(field, value, f"{value!r} is not of type {kinds}")
    if len(value) < min_length:
        reason = (f"{value!r} should be non-empty" if min_length == 1
                  else f"{value!r} is too short")
        raise invalid_field(field, value, reason)
    if max_length is not None and len(value) > max_length:
        raise invalid_field(field, value, f"{value!r} is too long")
    return value


def server_name(value: Any, field: str = "name") -> str:
    """1-255 characters, no leading or trailing whitespace (Nova's ``name`` format)."""
    name = string(value, field, min_length=1, max_length=NAME_MAX)
    assert name is not None
    if name != name.strip():
        raise invalid_field(field, name, f"{name!r} does not match the 'name' format: "
                                         "leading or trailing whitespace")
    return name


#: Nova's ``parameter_types.metadata`` key pattern
METADATA_KEY = r"^[a-zA-Z0-9-_:. ]{1,255}$"
_METADATA_KEY = re.compile(METADATA_KEY)


def metadata(value: Any, field: str = "metadata") -> dict[str, str]:
    """Nova's ``metadata``: an object whose keys match :data:`METADATA_KEY` and whose
    values are strings of at most 255 characters."""
    obj = require_object(value, field)
    extra = sorted(k for k in obj if not _METADATA_KEY.match(k))
    if extra:
        joined = ", ".join(repr(k) for k in extra)
        verb = "does" if len(extra) == 1 else "do"
        raise invalid_field(field, obj, f"{joined} {verb} not match any of the regexes: "
                                        f"{METADATA_KEY!r}")
    for key, item in obj.items():
        string(item, key, max_length=NAME_MAX)
    return {str(k): str(v) for k, v in obj.items()}


def description(value: Any, field: str = "description") -> str | None:
    return string(value, field, max_length=NAME_MAX, nullable=True)


def uuid_string(value: Any, field: str) -> str:
    text = string(value, field)
    assert text is not None
    try:
        uuid.UUID(text)
    except ValueError:
        raise invalid_field(field, text, f"{text!r} is not a 'uuid'") from None
    return text


def reference(value: Any, field: str) -> str:
    """A flavor or image reference: a string or integer id, or a URL ending in one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise invalid_field(field, value, f"{value!r} is not of type 'string', 'integer'")
    text = str(value).strip()
    if not text:
        raise invalid_field(field, value, f"{value!r} should be non-empty")
    return text.rstrip("/").rsplit("/", 1)[-1]


def null_or_empty(value: Any, field: str) -> None:
    """An action without parameters: ``null`` (or an empty object)."""
    if value is None or value == {}:
        return
    raise invalid_field(field, value, f"{value!r} is not of type 'null'")


_INTEGER = re.compile(r"^[0-9]+$")


def non_negative_int(value: str, param: str) -> int:
    if not _INTEGER.match(value):
        raise invalid_query(param, value, f"{value!r} does not match '^[0-9]+$'")
    return int(value)


def boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "t", "y"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off", "f", "n"):
        return False
    raise invalid_field(field, value, f"{value!r} is not of type 'boolean', 'string'")


def ip_address(value: Any, field: str, version: int) -> str | None:
    """An access address: ``accessIPv4`` must be IPv4, ``accessIPv6`` IPv6 (or empty)."""
    text = string(value, field, nullable=True)
    if not text:
        return None
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != version:
        raise invalid_field(field, text, f"{text!r} is not a 'ipv{version}'")
    return text
