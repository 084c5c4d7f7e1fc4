"""The HTTP server ``vmledger serve`` runs the API on (uvicorn on uvloop and httptools,
asyncio and h11 where those cannot be imported), as a client on a socket meets it:
malformed requests get a 400 (never a 5xx), a request's line and headers are bounded
as h11 bounds them (64 KiB), and what is within the bound is served, pipelined requests too."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.server import IMAGE, served
from vmledger import Engine
from vmledger.api import create_app
from vmledger.cli_http import MAX_HEAD_BYTES, BoundedHead

#: (loop, http) of the server: what ``vmledger serve`` picks here, and its fallback
SERVERS = {"uvloop+httptools": ("uvloop", BoundedHead), "asyncio+h11": ("asyncio", "h11")}


@pytest.fixture(params=list(SERVERS))
def address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    loop, http = SERVERS[request.param]
    engine = Engine("memory")
    try:
        with served(create_app(engine), loop=loop, http=http) as base:
            host, port = base.removeprefix("http://").split(":")
            yield host, int(port)
    finally:
        engine.close()


def exchange(address: tuple[str, int], data: bytes, *, chunk: int | None = None
             ) -> list[tuple[int, bytes]]:
    """Send ``data`` (in pieces of ``chunk`` bytes, or at once); every response read
    until the server closes or goes quiet: (status, body)."""
    received = b""
    with socket.create_connection(address, timeout=5) as conn:
        try:
            for start in range(0, len(data), chunk or len(data)):
                conn.sendall(data[start:start + (chunk or len(data))])
        except OSError:  # it answered and closed before all was sent
            pass
        conn.settimeout(0.5)
        try:
            while piece := conn.recv(65536):
                received += piece
        except OSError:
            pass
    responses = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body, rest = body + rest[:size], rest[size + 2:]
                if not size:
                    break
        elif b"content-length" in headers:
            size = int(headers[b"content-length"])
            body, rest = rest[:size], rest[size:]
        else:  # up to the close
            body, rest = rest, b""
        responses.append((int(lines[0].split()[1]), body))
        received = rest
    return responses


def get(path: str = "/v2.1", *headers: bytes) -> bytes:
    return b"\r\n".join([f"GET {path} HTTP/1.1".encode(), b"Host: x", *headers, b"", b""])


MALFORMED = {
    "negative content-length": b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: -1\r\n\r\n",
    "content-length not a number": b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: abc\r\n\r\n",
    "two content-lengths": b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                           b"Content-Length: 3\r\n\r\n{}",
    "content-length and chunked": b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"0\r\n\r\n",
    "bad chunk size": b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                      b"\r\nContent-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "unknown transfer coding": b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: gzip\r\n\r\n",
    "space in a header name": get("/v2.1", b"Bad Header: 1"),
    "header without colon": get("/v2.1", b"BadHeader"),
    "NUL in a header": get("/v2.1", b"X-A: a\x00b"),
    "bad method token": b"G@T /v2.1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "non-ASCII path": b"GET /v2.1/servers/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in the path": b"GET /v2.1/ser vers HTTP/1.1\r\nHost: x\r\n\r\n",
    "percent-encoded NUL": get("/v2.1/servers/%00"),
    "percent-encoded non-UTF-8": get("/v2.1/servers/%ff"),
    "TLS to a plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "empty header name": get("/v2.1", b": v"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_request_is_a_400(address: tuple[str, int], name: str) -> None:
    [(status, _body)] = exchange(address, MALFORMED[name])
    assert status == 400, name


def test_a_head_past_the_bound_is_a_400_and_the_connection_closes(
        address: tuple[str, int]) -> None:
    too_long = get("/v2.1", b"X-Padding: " + b"a" * 2 * MAX_HEAD_BYTES)
    [(status, body)] = exchange(address, too_long, chunk=4096)
    assert status == 400, body
    # a head that never ends: refused once the bound is passed, not read without end
    endless = b"GET /v2.1 HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (64 * 1024 * 1024)
    started = time.monotonic()
    [(status, body)] = exchange(address, endless, chunk=4096)
    assert status == 400, body
    assert time.monotonic() - started < 5


def test_what_fits_the_bound_is_served_bodies_and_pipelines_too(
        address: tuple[str, int]) -> None:
    # a head just inside the bound (a large token, say)
    near = get("/v2.1", b"X-Padding: " + b"a" * (MAX_HEAD_BYTES - 200))
    assert len(near) < MAX_HEAD_BYTES
    [(status, body)] = exchange(address, near)
    assert (status, json.loads(body)["version"]["id"]) == (200, "v2.1")
    # a body past the bound, sent with its head at once, counts as no head (user_data
    # as long as Nova takes it)
    user_data = base64.b64encode(b"#!/bin/sh\n" + b"x" * 49139).decode()
    assert len(user_data) == 65532
    payload = json.dumps({"server": {"name": "big", "flavorRef": "1", "imageRef": IMAGE,
                                     "user_data": user_data}}).encode()
    post = (b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    assert len(post) > MAX_HEAD_BYTES
    [(status, body)] = exchange(address, post)
    assert status == 202, body
    created: dict[str, Any] = json.loads(body)["server"]
    # pipelined: many requests in one send, every one answered, in order
    many = b"".join(get(f"/v2.1/servers/{created['id']}", b"X-Padding: " + b"p" * 1000)
                    for _ in range(300))
    assert len(many) > 2 * MAX_HEAD_BYTES
    answers = exchange(address, many)
    assert [status for status, _ in answers] == [200] * 300
    assert {json.loads(body)["server"]["id"] for _, body in answers} == {created["id"]}
