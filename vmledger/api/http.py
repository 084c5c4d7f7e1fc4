"""The plumbing every Compute API endpoint shares.

- :class:`ComputeMiddleware` (pure ASGI): makes the request id and puts
  ``x-openstack-request-id`` and ``x-compute-request-id`` on every response, faults
  too; refuses URLs whose percent-decoded path or query is not UTF-8 or holds a NUL
  (400); under ``/v2.1`` it also negotiates the microversion and adds the microversion
  headers.
- :func:`endpoint` turns a handler of a :class:`Call` into a Starlette endpoint that
  authenticates the caller and turns any exception into a Nova fault (an unexpected one
  is logged: a 500 is a bug).
- :func:`read_json` reads a request body with Nova's content-type, size and JSON rules,
  and :mod:`vmledger.api.jsontext`'s depth and Unicode checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmledger import logs
from vmledger.api import microversions as mv
from vmledger.api.auth import Authenticator, Principal
from vmledger.api.faults import ApiError, fault_response, response_for
from vmledger.api.jsontext import BodyError, decode_json, url_problem
from vmledger.api.neutron import is_network_path, neutron_error
from vmledger.api.views import Links, Viewer
from vmledger.domain.server import Context
from vmledger.domain.service import new_request_id
from vmledger.engine import Engine

access = logging.getLogger("vmledger.api.access")

P = ParamSpec("P")
T = TypeVar("T")

#: the largest request body accepted (413 above it)
MAX_BODY_BYTES = 1024 * 1024
REQUEST_ID_HEADERS = ("x-openstack-request-id", "x-compute-request-id")
VERSIONED_PREFIX = "/v2.1"
_JSON_TYPES = frozenset({"application/json", "application/vnd.openstack.compute+json"})


def is_versioned(path: str) -> bool:
    return path == VERSIONED_PREFIX or path.startswith(VERSIONED_PREFIX + "/")


class ComputeMiddleware:
    """Request ids on every response; URLs that are not UTF-8, or hold a NUL, refused;
    microversions (and an access log line) for everything under ``/v2.1``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        logs.request_id.set(request_id)  # every log record of this call carries it
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        extra = {name: request_id for name in REQUEST_ID_HEADERS}
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogatepass")
        problem = url_problem(raw_path, scope.get("query_string", b""))
        if problem is not None:
            refusal = (neutron_error(400, "HTTPBadRequest", problem, headers=extra)
                       if is_network_path(scope["path"])
                       else fault_response(400, problem, headers=extra))
            await refusal(scope, receive, send)
            return
        if not is_versioned(scope["path"]):
            await self.app(scope, receive, _with_headers(send, extra))
            return
        path: str = scope["path"]
        if path.endswith("/") and path != VERSIONED_PREFIX + "/":
            # /v2.1/servers/ is /v2.1/servers (only /v2.1/ keeps its slash)
            trimmed = path.rstrip("/") or "/"
            scope = {**scope, "path": trimmed, "raw_path": trimmed.encode()}
        try:
            version = mv.negotiate(Headers(scope=scope))
        except mv.VersionError as exc:
            # nothing was negotiated, so nothing is echoed (as Nova); Vary still applies
            response = fault_response(exc.code, exc.message,
                                      headers={**extra, "Vary": mv.VARY_VALUE})
            await response(scope, receive, send)
            return
        state["api_version"] = version
        extra.update(mv.response_headers(version))

        started = time.perf_counter()
        status = 0
        sent = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                # a handler may override them (a repeat answers with its first request id)
                for name, value in {**extra, **state.get("response_headers", {})}.items():
                    headers[name] = value
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    _log_access(scope, state, status=status, sent=sent, started=started,
                                version=str(version))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _with_headers(send: Send, extra: dict[str, str]) -> Send:
    """``send``, adding ``extra`` to the response's headers."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in extra.items():
                headers[name] = value
        await send(message)

    return sending


def _log_access(scope: Scope, state: dict[str, Any], *, status: int, sent: int,
                started: float, version: str) -> None:
    """One access line per call, once its body is sent: who (user, project, client
    address), what (method, path, microversion) and how it went (status, bytes sent,
    duration)."""
    if not access.isEnabledFor(logging.INFO):  # nothing to build for a quieter level
        return
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else None
    duration = round((time.perf_counter() - started) * 1000, 3)
    user, project = state.get("user_id"), state.get("project_id")
    access.info("%s %s %s %d %dB %.1fms user=%s project=%s", address or "-",
                scope["method"], scope["path"], status, sent, duration, user or "-",
                project or "-",
                extra={"request_id": state.get("request_id"), "method": scope["method"],
                       "path": scope["path"], "status": status, "bytes": sent,
                       "duration_ms": duration, "client": address, "user_id": user,
                       "project_id": project, "microversion": version})


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


_HOST_STATUS = mv.APIVersion(2, 16)


@dataclass(frozen=True)
class Call:
    """One API call: the request, the engine, and what the middleware decided."""

    request: Request
    engine: Engine
    request_id: str
    version: mv.APIVersion
    principal: Principal

    @cached_property
    def viewer(self) -> Viewer:
        return Viewer(self.version, Links(base_url(self.request),
                                          self.principal.url_project_id),
                      is_admin=self.principal.is_admin)

    def server_viewer(self) -> Viewer:
        """The viewer servers are rendered for: :attr:`viewer`, plus the hosts' states
        when the body shows ``host_status`` (administrators, from 2.16). Reads the
        views when it does: call it in the thread pool."""
        viewer = self.viewer
        if not viewer.is_admin or self.version < _HOST_STATUS:
            return viewer
        states = self.engine.host_statuses()
        return replace(viewer, host_states=tuple(sorted(states.items())))

    def context(self) -> Context:
        """The engine context: the caller, and this request's id for the events."""
        p = self.principal
        return self.engine.context(user_id=p.user_id, project_id=p.project_id,
                                   is_admin=p.is_admin, request_id=self.request_id)

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= mv.APIVersion(major, minor)

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a (synchronous, blocking) engine call in the thread pool."""
        return await run_in_threadpool(func, *args, **kwargs)


Handler = Callable[[Call], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def endpoint(engine: Engine, authenticate: Authenticator, handler: Handler) -> Endpoint:
    """A Starlette endpoint running ``handler``, with every exception a Nova fault."""

    async def serve(request: Request) -> Response:
        state = request.scope.setdefault("state", {})
        request_id = str(state.get("request_id") or new_request_id())
        try:
            principal = authenticate(request)
            # the access line names who called
            state["user_id"], state["project_id"] = principal.user_id, principal.project_id
            call = Call(request=request, engine=engine, request_id=request_id,
                        version=state.get("api_version", mv.DEFAULT_VERSION),
                        principal=principal)
            return await handler(call)
        except ClientDisconnect:  # the caller left while sending the body: nobody to tell
            return Response(status_code=400)
        except Exception as exc:
            return response_for(exc, request_id=request_id)

    serve.__name__ = getattr(handler, "__name__", "endpoint")
    return serve


#: a body that was absent (zero bytes)
EMPTY: Any = object()


async def read_json(request: Request) -> Any:
    """The JSON body, :data:`EMPTY` when there is none; 415, 413 or 400 as Nova (400 too
    for nesting too deep or strings that are not valid Unicode text or hold a NUL, see
    :mod:`vmledger.api.jsontext`)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type and media_type != "text/plain" and media_type not in _JSON_TYPES:
        raise ApiError(415, "Unsupported Content-Type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "Request is too large.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "Request is too large.")
    if not body:
        return EMPTY
    try:
        return decode_json(bytes(body))
    except BodyError as exc:
        raise ApiError(400, exc.message) from None
