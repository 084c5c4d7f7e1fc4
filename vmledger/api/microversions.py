"""Compute API microversions: parsing, negotiation and the response headers.

A client asks for a microversion with ``OpenStack-API-Version: compute 2.N`` (the
current header) or ``X-OpenStack-Nova-API-Version: 2.N`` (the legacy one, which Tempest
sends); ``latest`` means the maximum and no header means 2.1. A request outside
[:data:`MIN_VERSION`, :data:`MAX_VERSION`] gets 406, a malformed one 400, with Nova's
messages. Every response under ``/v2.1`` echoes the version served in both headers, plus
``Vary`` naming them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import NamedTuple

API_VERSION_HEADER = "OpenStack-API-Version"
LEGACY_VERSION_HEADER = "X-OpenStack-Nova-API-Version"
VARY_VALUE = f"{API_VERSION_HEADER}, {LEGACY_VERSION_HEADER}"
SERVICE_TYPE = "compute"

_VERSION_RE = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


class APIVersion(NamedTuple):
    """A microversion; compares as a (major, minor) tuple, prints as ``2.N``."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> APIVersion:
        """``"2.19"`` → ``APIVersion(2, 19)``; raise :class:`InvalidVersion` otherwise."""
        match = _VERSION_RE.match(text.strip())
        if match is None:
            raise InvalidVersion(text)
        return cls(int(match.group(1)), int(match.group(2)))


#: the oldest microversion served
MIN_VERSION = APIVersion(2, 1)
#: the newest microversion served: every response shape up to it is implemented
MAX_VERSION = APIVersion(2, 96)
#: what a request without a version header gets
DEFAULT_VERSION = MIN_VERSION


class VersionError(Exception):
    """A version header that cannot be honoured; ``code`` is the HTTP status."""

    code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidVersion(VersionError):
    """A malformed version string → 400 (Nova's ``InvalidAPIVersionString``)."""

    code = 400

    def __init__(self, text: str) -> None:
        super().__init__(f"API Version String {text} is of invalid format. Must be of format "
                         "MajorNum.MinorNum.")


class VersionNotAcceptable(VersionError):
    """A well-formed version outside the served range → 406 (``InvalidGlobalAPIVersion``)."""

    code = 406

    def __init__(self, version: APIVersion | str) -> None:
        super().__init__(f"Version {version} is not supported by the API. Minimum is "
                         f"{MIN_VERSION} and maximum is {MAX_VERSION}.")


def requested_version_string(headers: Mapping[str, str]) -> str | None:
    """The compute version a request asks for, as text, or ``None`` when it asks nothing.

    ``OpenStack-API-Version`` may list several services (``compute 2.5, identity 3``);
    only the ``compute`` entry counts. Without one, the legacy header is read.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    current = lowered.get(API_VERSION_HEADER.lower())
    if current is not None:
        for entry in current.split(","):
            service, _, value = entry.strip().partition(" ")
            if service.lower() == SERVICE_TYPE:
                return value.strip()
    legacy = lowered.get(LEGACY_VERSION_HEADER.lower())
    if legacy is not None:
        return legacy.strip()
    return None


def negotiate(headers: Mapping[str, str]) -> APIVersion:
    """The microversion to serve a request with, or raise :class:`VersionError`."""
    text = requested_version_string(headers)
    if text is None or text == "":
        return DEFAULT_VERSION
    if text.lower() == "latest":
        return MAX_VERSION
    version = APIVersion.parse(text)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise VersionNotAcceptable(version)
    return version


_CURRENT_NAME = API_VERSION_HEADER.lower().encode("latin-1")
_LEGACY_NAME = LEGACY_VERSION_HEADER.lower().encode("latin-1")


def negotiate_raw(headers: Iterable[tuple[bytes, bytes]]) -> APIVersion:
    """:func:`negotiate` for an ASGI request's raw headers (the last of each name counts,
    as there), without building a mapping of them all; each pair of header values is
    negotiated once."""
    current = legacy = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == _CURRENT_NAME:
            current = value
        elif lowered == _LEGACY_NAME:
            legacy = value
    if current is None and legacy is None:
        return DEFAULT_VERSION
    return _negotiated(current, legacy)


@lru_cache(maxsize=256)
def _negotiated(current: bytes | None, legacy: bytes | None) -> APIVersion:
    headers = {}
    if current is not None:
        headers[API_VERSION_HEADER] = current.decode("latin-1")
    if legacy is not None:
        headers[LEGACY_VERSION_HEADER] = legacy.decode("latin-1")
    return negotiate(headers)  # a refusal raises, and is not kept


def response_headers(version: APIVersion) -> dict[str, str]:
    """The headers every microversioned response carries."""
    return {API_VERSION_HEADER: f"{SERVICE_TYPE} {version}",
            LEGACY_VERSION_HEADER: str(version),
            "Vary": VARY_VALUE}
