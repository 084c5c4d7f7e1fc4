"""Checks of command input shared by the command modules (Nova's schemas' rules)."""

from __future__ import annotations

import re
from typing import Any

from vmledger.domain.errors import BadRequest, Forbidden

NAME_MAX = 255
METADATA_MAX_ITEMS = 128
#: no count limit (checked later against the server's project's quota)
UNLIMITED_ITEMS = -1
#: tags one server may carry (Nova's ``MAX_TAGS_PER_INSTANCE``)
MAX_TAGS = 50

_METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")


def check_name(name: object, field: str = "name") -> str:
    if (not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX
            or name != name.strip()):
        raise BadRequest(f"Invalid input for field/attribute {field}. Value: {name!r}. "
                         f"It must be a string of 1 to {NAME_MAX} characters without "
                         "leading or trailing whitespace.")
    return name


def check_keypair_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or name != name.strip():
        raise BadRequest("A key pair name is 1 to 255 characters, without leading or "
                         "trailing spaces")
    return name


def check_tag(tag: object) -> str:
    if not isinstance(tag, str) or not 1 <= len(tag) <= 60 or "/" in tag or "," in tag:
        raise BadRequest(f"Invalid tag {tag!r}: 1 to 60 characters, without '/' or ','")
    return tag


def check_metadata_count(metadata: dict[Any, Any], *, quota: bool = True,
                         limit: int = METADATA_MAX_ITEMS) -> None:
    if limit >= 0 and len(metadata) > limit:
        message = f"Maximum number of metadata items exceeds {limit}"
        # a server's: Nova's metadata_items quota (403); an image's: its own limit (400)
        raise Forbidden(message) if quota else BadRequest(message)


def check_metadata(metadata: object, *, quota: bool = True,
                   limit: int = METADATA_MAX_ITEMS) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise BadRequest("Invalid input for field/attribute metadata. "
                         "It must be an object of string keys and string values.")
    check_metadata_count(metadata, quota=quota, limit=limit)
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY.match(key):
            raise BadRequest(f"Invalid input for field/attribute metadata. Key: {key!r}. "
                             "Keys are 1 to 255 characters of [a-zA-Z0-9-_:. ].")
        if not isinstance(value, str) or len(value) > NAME_MAX:
            raise BadRequest(f"Invalid input for field/attribute metadata. Value of {key!r} "
                             "must be a string of at most 255 characters.")
    return dict(metadata)


def check_description(description: object) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str) or len(description) > NAME_MAX:
        raise BadRequest("Invalid input for field/attribute description. "
                         "It must be a string of at most 255 characters.")
    return description


def no_parameters(action: str, params: dict[str, Any]) -> None:
    if params:
        raise BadRequest(f"Action {action} takes no parameters: {', '.join(sorted(params))}")
