"""A TCP proxy in front of PostgreSQL that counts the messages clients send, to measure
the round trips a piece of code costs: every ``Sync`` (the end of an extended-protocol
exchange, or of a pipeline's batch), every ``Flush`` (a pipeline asking for the results
queued so far, then waiting for them) and every simple ``Query`` is one wait for the
server; a ``Flush`` sent right after a ``Sync`` (psycopg leaving a pipeline) waits for
the same answer.

Usage::

    with WireCounter(url) as wire:
        engine = Engine(wire.url, ...)
        wire.reset()
        ...
        wire.round_trips()
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

#: the frontend messages after which a client waits for the server (``H`` counts only
#: when it does not follow a ``S``, see :attr:`WireCounter.sent`)
ROUND_TRIP_MESSAGES = ("S", "H", "Q")
#: SSLRequest and GSSENCRequest: untyped, like the startup message they precede
_ENCRYPTION_REQUESTS = (80877103, 80877104)


class WireCounter:
    """Forwards connections to the server of ``url``; counts the clients' messages by
    type (:attr:`sent`; a ``Flush`` right after a ``Sync`` is not counted). Connections
    go without TLS or GSS encryption, so that the stream can be read."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        query = "&".join(q for q in (parts.query, "sslmode=disable&gssencmode=disable") if q)
        self.url = urlunsplit((parts.scheme, f"{netloc[0]}@{host}" if len(netloc) > 1
                               else host, parts.path, query, parts.fragment))
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.sent.clear()

    def round_trips(self) -> int:
        """The waits for the server counted since the last :meth:`reset`."""
        with self._lock:
            return sum(self.sent[kind] for kind in ROUND_TRIP_MESSAGES)

    def statements(self) -> int:
        """The statements sent since the last :meth:`reset`: every ``Execute`` of the
        extended protocol, and every simple ``Query`` (counted as one)."""
        with self._lock:
            return self.sent["E"] + self.sent["Q"]

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._frontend, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _frontend(self, source: socket.socket, sink: socket.socket) -> None:
        """Forward the client's stream, counting its typed messages (the startup
        message has no type byte)."""
        buffer = b""
        started = False
        last = ""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                buffer += data
                while True:
                    if not started:
                        if len(buffer) < 4:
                            break
                        (length,) = struct.unpack("!I", buffer[:4])
                        if len(buffer) < length:
                            break
                        (code,) = struct.unpack("!I", buffer[4:8])
                        # an encryption request (refused: see the URL) precedes it
                        started = code not in _ENCRYPTION_REQUESTS
                        buffer = buffer[length:]
                        continue
                    if len(buffer) < 5:
                        break
                    (length,) = struct.unpack("!I", buffer[1:5])
                    if len(buffer) < 1 + length:
                        break
                    kind = chr(buffer[0])
                    buffer = buffer[1 + length:]
                    if not (kind == "H" and last == "S"):
                        with self._lock:
                            self.sent[kind] += 1
                    last = kind
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
