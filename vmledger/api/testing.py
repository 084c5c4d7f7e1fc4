"""A synchronous HTTP client for the ASGI app, for tests and scripts.

It drives the app in-process through httpx's ASGI transport (no sockets, no server),
one event loop per request, so a test can call the engine (``run_until_idle``) between
requests without any threads of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.types import ASGIApp

_UNSET: Any = object()


class ApiClient:
    """``client.get("/v2.1/servers")`` → an :class:`httpx.Response`."""

    def __init__(self, app: ASGIApp, *, base_url: str = "http://testserver",
                 headers: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.base_url = base_url
        self.headers = dict(headers or {})

    def request(self, method: str, url: str, *, json: Any = _UNSET,
                content: bytes | None = None, headers: Mapping[str, str] | None = None,
                params: Mapping[str, Any] | list[tuple[str, Any]] | None = None
                ) -> httpx.Response:
        merged = {**self.headers, **(headers or {})}
        kwargs: dict[str, Any] = {"headers": merged}
        if json is not _UNSET:
            kwargs["json"] = json
        if content is not None:
            kwargs["content"] = content
        if params is not None:
            kwargs["params"] = params

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as c:
                response = await c.request(method, url, **kwargs)
                await response.aread()
                return response

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)
