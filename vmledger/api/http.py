"""The plumbing every Compute API endpoint shares.

- :class:`ApiLayer` (pure ASGI, the one layer before the router): counts and times
  every request for the metrics; makes the request id and puts
  ``x-openstack-request-id`` and ``x-compute-request-id`` on every response, faults
  too; refuses URLs whose percent-decoded path or query is not UTF-8 or holds a NUL
  (400); under ``/v2.1`` it also negotiates the microversion, adds the microversion
  headers and writes the access line; and pins the read models' layout around the
  route's work.
- :func:`endpoint` turns a handler of a :class:`Call` into a route's ASGI app that
  authenticates the caller and turns any exception into a Nova fault (an unexpected one
  is logged: a 500 is a bug); :meth:`Call.run` runs its blocking engine calls in a
  worker thread (:func:`vmledger.api.threads.in_thread`).
- :func:`read_json` reads a request body with Nova's content-type, size and JSON rules,
  and :mod:`vmledger.api.jsontext`'s depth and Unicode checks.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ParamSpec, TypeVar

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmledger import logs
from vmledger.api import microversions as mv
from vmledger.api.auth import Authenticator, Principal
from vmledger.api.faults import ApiError, fault_response, response_for
from vmledger.api.jsontext import BodyError, decode_json, url_problem
from vmledger.api.metrics import ROUTE_KEY, ApiMetrics, route_template
from vmledger.api.neutron import is_network_path, neutron_error
from vmledger.api.routing import IndexedRouter
from vmledger.api.threads import in_thread
from vmledger.api.views import Links, Viewer
from vmledger.domain.server import Context
from vmledger.engine import Engine

access = logging.getLogger("vmledger.api.access")

P = ParamSpec("P")
T = TypeVar("T")

#: the largest request body accepted (413 above it)
MAX_BODY_BYTES = 1024 * 1024
REQUEST_ID_HEADERS = ("x-openstack-request-id", "x-compute-request-id")
VERSIONED_PREFIX = "/v2.1"
_JSON_TYPES = frozenset({"application/json", "application/vnd.openstack.compute+json"})


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def request_id_now() -> str:
    """A new request id, ``req-`` and a random UUID (version 4) as
    :func:`vmledger.domain.service.new_request_id` makes, written out without building a
    :class:`uuid.UUID` (a few microseconds of every request)."""
    h = os.urandom(16).hex()
    return f"req-{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def is_versioned(path: str) -> bool:
    return path == VERSIONED_PREFIX or path.startswith(VERSIONED_PREFIX + "/")


class ApiLayer:
    """The one layer every HTTP request passes before the router (pure ASGI, outermost
    but for Starlette's own): it counts and times the request for the metrics, makes
    the request id and puts it on every response, refuses URLs that are not UTF-8 or
    hold a NUL, and under ``/v2.1`` negotiates the microversion, adds its headers and
    writes the access line; it notes the route template the router matched (the
    metrics' label) and pins the read models' layout around the route's work.

    One layer instead of four (metrics, request ids and microversions, the route
    probe, the layout pin): each was a coroutine frame, and two wrapped ``send``."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, engine: Engine) -> None:
        self.app = app
        self.metrics = metrics
        self.updater = engine.updater

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # shared with the handlers even where the scope is copied below
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500  # unless a response starts
        inner: Scope | None = None  # the scope the router saw, once it was called
        try:
            request_id = request_id_now()
            logs.request_id.set(request_id)  # every log record of this call carries it
            state["request_id"] = request_id
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8",
                                                                      "surrogatepass")
            problem = url_problem(raw_path, scope.get("query_string", b""))
            if problem is not None:
                ids = {name: request_id for name in REQUEST_ID_HEADERS}
                refusal = (neutron_error(400, "HTTPBadRequest", problem, headers=ids)
                           if is_network_path(scope["path"])
                           else fault_response(400, problem, headers=ids))
                status = refusal.status_code
                await refusal(scope, receive, send)
                return
            path: str = scope["path"]
            if not is_versioned(path):
                id_headers = _id_headers(request_id)

                async def send_with_ids(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = int(message["status"])
                        _add_headers(message, id_headers)
                    await send(message)

                inner = scope
                with self.updater.request():
                    await self._app_for(scope)(scope, receive, send_with_ids)
                return
            if path.endswith("/") and path != VERSIONED_PREFIX + "/":
                # /v2.1/servers/ is /v2.1/servers (only /v2.1/ keeps its slash)
                trimmed = path.rstrip("/") or "/"
                scope = {**scope, "path": trimmed, "raw_path": trimmed.encode()}
            try:
                version = mv.negotiate_raw(scope["headers"])
            except mv.VersionError as exc:
                # nothing was negotiated, so nothing is echoed (as Nova); Vary still
                # applies
                response = fault_response(
                    exc.code, exc.message,
                    headers={**{name: request_id for name in REQUEST_ID_HEADERS},
                             "Vary": mv.VARY_VALUE})
                status = response.status_code
                await response(scope, receive, send)
                return
            state["api_version"] = version
            extra = _id_headers(request_id) + _version_headers(version)
            served = time.perf_counter()
            sent = 0

            async def send_with_headers(message: Message) -> None:
                nonlocal status, sent
                kind = message["type"]
                if kind == "http.response.start":
                    status = int(message["status"])
                    # a handler may override them (a repeat answers with its first
                    # request id)
                    overrides = state.get("response_headers")
                    if overrides:
                        headers = MutableHeaders(scope=message)
                        for name, value in {**_as_dict(extra), **overrides}.items():
                            headers[name] = value
                    else:
                        _add_headers(message, extra)
                elif kind == "http.response.body":
                    sent += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        _log_access(scope, state, status=status, sent=sent,
                                    started=served, version=version)
                await send(message)

            inner = scope
            with self.updater.request():
                await self._app_for(scope)(scope, receive, send_with_headers)
        finally:
            if inner is not None:
                _note_route(inner, state)
            self.metrics.finished(scope["method"], state, status,
                                  time.perf_counter() - started)

    def _app_for(self, scope: Scope) -> ASGIApp:
        """What serves ``scope``: the route's :class:`Endpoint` itself when the app's
        router (an :class:`IndexedRouter`) finds it a full match, else the rest of the
        stack (Starlette's exception layer, then the router: 404s, 405s, redirects, the
        shims' function routes). An endpoint answers every exception itself, so the
        exception layer, the router's and the route's frames have nothing to do for it."""
        router = getattr(scope.get("app"), "router", None)
        if isinstance(router, IndexedRouter):
            found = router.full_match(scope)
            if found is not None:
                route, child_scope = found
                endpoint = getattr(route, "app", None)
                if isinstance(endpoint, Endpoint):
                    router.enter(scope, route, child_scope)
                    return endpoint
        return self.app


#: header names as a response carries them (lower case, bytes)
_ID_NAMES = tuple(name.lower().encode("latin-1") for name in REQUEST_ID_HEADERS)
RawHeaders = tuple[tuple[bytes, bytes], ...]


def _id_headers(request_id: str) -> RawHeaders:
    value = request_id.encode("latin-1")
    return tuple((name, value) for name in _ID_NAMES)


@functools.lru_cache(maxsize=256)
def _version_headers(version: mv.APIVersion) -> RawHeaders:
    """The microversion headers of ``version``, encoded once."""
    return tuple((name.lower().encode("latin-1"), value.encode("latin-1"))
                 for name, value in mv.response_headers(version).items())


#: the names of every header :func:`_add_headers` may be given
_ADDED_NAMES = frozenset(_ID_NAMES) | {name for name, _value in
                                      _version_headers(mv.DEFAULT_VERSION)}


def _as_dict(headers: RawHeaders) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}


def _add_headers(message: Message, extra: RawHeaders) -> None:
    """Set ``extra`` (request id or microversion headers) on a response's start message:
    appended when the response has none of them (the usual case), else each one
    replacing the response's own as :class:`~starlette.datastructures.MutableHeaders`
    does."""
    raw = message.get("headers", ())
    for name, _value in raw:
        if name in _ADDED_NAMES:
            break
    else:
        message["headers"] = [*raw, *extra]
        return
    headers = MutableHeaders(scope=message)
    for name, value in extra:
        headers[name.decode("latin-1")] = value.decode("latin-1")


def _note_route(scope: Scope, state: dict[str, Any]) -> None:
    """Note the route template (and its handler's name) the router matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        state[ROUTE_KEY] = route_template(path)
        state["vmledger_handler"] = getattr(getattr(route, "endpoint", None), "__name__",
                                            None)


def _log_access(scope: Scope, state: dict[str, Any], *, status: int, sent: int,
                started: float, version: mv.APIVersion) -> None:
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
                       "project_id": project, "microversion": str(version)})


#: base URLs by what Starlette builds them from (see :func:`base_url`); emptied when full
#: (the Host header is the caller's to choose)
_BASE_URLS: dict[tuple[Any, ...], str] = {}
_BASE_URLS_KEPT = 256


def base_url(request: Request) -> str:
    """``request.base_url`` without its trailing slash: Starlette's, kept by what it is
    made of (scheme, server, root path, Host header), since building it (a URL parsed
    and joined again) cost about 7 % of a ``GET /servers/{id}``."""
    scope = request.scope
    host = None
    for name, value in scope["headers"]:
        if name == b"host":  # the first, as Starlette reads it
            host = value
            break
    server = scope.get("server")
    key = (scope.get("scheme", "http"), None if server is None else tuple(server),
           scope.get("app_root_path"), scope.get("root_path", ""), host)
    found = _BASE_URLS.get(key)
    if found is None:
        found = str(request.base_url).rstrip("/")
        if len(_BASE_URLS) >= _BASE_URLS_KEPT:
            _BASE_URLS.clear()
        _BASE_URLS[key] = found
    return found


_HOST_STATUS = mv.APIVersion(2, 16)
#: viewers by what they are made of (see :attr:`Call.viewer`); emptied when full
_VIEWERS: dict[tuple[mv.APIVersion, str, str | None, bool], Viewer] = {}
_VIEWERS_KEPT = 1024


def header(request: Request, name: bytes) -> str | None:
    """The request's first ``name`` header (lower case), as ``request.headers.get`` reads
    it, without building the request's :class:`~starlette.datastructures.Headers`."""
    raw: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in raw:
        if key == name:
            return value.decode("latin-1")
    return None


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
        principal = self.principal
        key = (self.version, base_url(self.request), principal.url_project_id,
               principal.is_admin)
        found = _VIEWERS.get(key)
        if found is None:  # one (immutable) viewer for all its requests
            found = Viewer(self.version, Links(key[1], key[2]), is_admin=key[3])
            if len(_VIEWERS) >= _VIEWERS_KEPT:
                _VIEWERS.clear()
            _VIEWERS[key] = found
        return found

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
        return await in_thread(func, *args, **kwargs)


Handler = Callable[[Call], Awaitable[Response]]


class Endpoint:
    """A route's ASGI app running a :data:`Handler`, with every exception a Nova fault.

    An ASGI app rather than a request function: Starlette wraps a function in its own
    exception layer and a second :class:`Request`, which this needs neither of (every
    exception is answered here). ``__name__`` is the handler's (the metrics' command
    name for handlers that name none)."""

    def __init__(self, engine: Engine, authenticate: Authenticator, handler: Handler
                 ) -> None:
        self.engine = engine
        self.authenticate = authenticate
        self.handler = handler
        self.__name__ = getattr(handler, "__name__", "endpoint")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.serve(Request(scope, receive, send))
        await response(scope, receive, send)

    async def serve(self, request: Request) -> Response:
        state = request.scope.setdefault("state", {})
        request_id = str(state.get("request_id") or request_id_now())
        try:
            principal = self.authenticate(request)
            # the access line names who called
            state["user_id"], state["project_id"] = principal.user_id, principal.project_id
            call = Call(request=request, engine=self.engine, request_id=request_id,
                        version=state.get("api_version", mv.DEFAULT_VERSION),
                        principal=principal)
            return await self.handler(call)
        except ClientDisconnect:  # the caller left while sending the body: nobody to tell
            return Response(status_code=400)
        except Exception as exc:
            return response_for(exc, request_id=request_id)


def endpoint(engine: Engine, authenticate: Authenticator, handler: Handler) -> Endpoint:
    """A route's app running ``handler`` (see :class:`Endpoint`)."""
    return Endpoint(engine, authenticate, handler)


#: a body that was absent (zero bytes)
EMPTY: Any = object()


async def read_json(request: Request) -> Any:
    """The JSON body, :data:`EMPTY` when there is none; 415, 413 or 400 as Nova (400 too
    for nesting too deep or strings that are not valid Unicode text or hold a NUL, see
    :mod:`vmledger.api.jsontext`). Reads the request's body messages itself (once: the
    body is not kept for another reader), as ``Request.stream`` would; its headers as
    ``Request.headers`` reads them (the first of a name), in one pass."""
    content_type = declared = None
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            if content_type is None:
                content_type = value
        elif name == b"content-length" and declared is None:
            declared = value
    if content_type:
        media_type = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
        if media_type and media_type != "text/plain" and media_type not in _JSON_TYPES:
            raise ApiError(415, "Unsupported Content-Type")
    if declared is not None:
        length = declared.decode("latin-1")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ApiError(413, "Request is too large.")
    parts: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ApiError(413, "Request is too large.")
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    if not size:
        return EMPTY
    try:
        return decode_json(parts[0] if len(parts) == 1 else b"".join(parts))
    except BodyError as exc:
        raise ApiError(400, exc.message) from None
