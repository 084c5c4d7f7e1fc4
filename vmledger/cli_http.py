"""The HTTP server ``vmledger serve`` runs the API on: uvicorn, on uvloop's event loop
and httptools' parser (h11's pure-Python parser was a third of the event loop's time),
or on asyncio's loop and h11 for whichever of them cannot be imported here (a platform
without their wheels), with a warning.

httptools keeps no bound on a request's line and headers (h11 refuses a head still
incomplete past its bound): :class:`BoundedHead` refuses one past
:data:`MAX_HEAD_BYTES`, so a client cannot grow the server's memory without end by
never ending its headers.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
from typing import Any

import uvicorn

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as exc:  # no httptools here: the fallback says so when it is used
    _NO_HTTPTOOLS: ImportError | None = exc
else:
    _NO_HTTPTOOLS = None

log = logging.getLogger("vmledger.http")

#: the most bytes of a request's line and headers (Nova's servers take up to 16 KiB a
#: line; h11's default bound is 16 KiB of an incomplete head)
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = "Request line and headers too large."


def event_loop() -> str:
    """uvicorn's ``loop`` setting: ``uvloop``, else ``asyncio`` (with a warning)."""
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        log.warning("uvloop cannot be imported (%s): serving on asyncio's event loop "
                    "instead, slower", exc)
        return "asyncio"
    return "uvloop"


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting: :class:`BoundedHead` (httptools), else ``h11`` (with
    a warning)."""
    if _NO_HTTPTOOLS is not None:
        log.warning("httptools cannot be imported (%s): parsing HTTP with h11 instead, "
                    "slower", _NO_HTTPTOOLS)
        return "h11"
    return BoundedHead


def http_server(app: Any, *, host: str, port: int, log_level: str | int | None,
                **options: Any) -> uvicorn.Server:
    """uvicorn serving ``app`` on :func:`event_loop` and :func:`http_protocol` (unless
    ``options`` name a ``loop`` or ``http``), with our logging (no configuration of its
    own, no access log: the API writes its own). Once it listens it logs what it runs
    on: its event loop's class and its connections'."""
    settings: dict[str, Any] = {
        "log_config": None, "access_log": False,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES, **options}
    if "loop" not in settings:  # (each warns only when it is used)
        settings["loop"] = event_loop()
    if "http" not in settings:
        settings["http"] = http_protocol()
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, **settings)
    return NamingServer(config)


class NamingServer(uvicorn.Server):
    """uvicorn's server, saying what it runs on once it listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        loop = type(asyncio.get_running_loop())
        # uvicorn's protocol the connections' class is (or derives from)
        protocol = next(kind for kind in self.config.http_protocol_class.__mro__
                        if kind.__module__.startswith("uvicorn."))
        log.info("HTTP server: event loop %s.%s, protocol %s.%s", loop.__module__,
                 loop.__qualname__, protocol.__module__, protocol.__qualname__)


if _NO_HTTPTOOLS is None:

    class BoundedHead(HttpToolsProtocol):
        """uvicorn's httptools protocol refusing (400) a request whose line and headers
        pass :data:`MAX_HEAD_BYTES`: while a head is read, the parser is fed no more
        than the room left for it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_bytes: int | None = 0  # None while a body is read
            self.messages = 0

        def data_received(self, data: bytes) -> None:
            while self.head_bytes is not None and data:
                if self.head_bytes >= MAX_HEAD_BYTES:
                    self.logger.warning(HEAD_TOO_LARGE)
                    self.send_400_response(HEAD_TOO_LARGE)
                    return
                room = MAX_HEAD_BYTES - self.head_bytes
                piece, data = (data, b"") if len(data) <= room else (data[:room],
                                                                     data[room:])
                messages = self.messages
                super().data_received(piece)
                if self.transport.is_closing():
                    return
                if self.head_bytes is not None and self.messages == messages:
                    self.head_bytes += len(piece)  # the same head, not done yet
                # else: its head ended in this piece (a next head starts counted at 0)
            if data:
                super().data_received(data)

        def on_headers_complete(self) -> None:
            self.head_bytes = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.head_bytes = 0
            self.messages += 1
            super().on_message_complete()
