"""The ledger over HTTP, under ``/ledger/v1`` (our own API, not part of Nova's).

Every read comes from the event log itself (never the servers view), so it covers
deleted servers and any moment of the past:

- ``GET /ledger/v1/servers/{id}/history?after=&limit=``: a page of the server's events
  (``after`` is a version; a ``next`` link while there is more);
- ``GET /ledger/v1/servers/{id}/state?as_of=<ISO 8601>`` or ``?version=N``: the server's
  full state then (both: the earlier of the two);
- ``GET /ledger/v1/servers/{id}/explain``: why it is in its status, in plain words;
- ``GET /ledger/v1/servers/{id}/timeline``: the same story as a self-contained HTML page
  (see :mod:`vmledger.api.timeline`);
- ``GET /ledger/v1/requests/{request_id}``: the causal chain of one request;
- ``GET /ledger/v1/verify``: the tamper-evidence check (administrators only);
- ``GET /ledger/v1/events?after=&limit=&wait=``: the change feed, long-polled;
- ``GET /ledger/v1/events/stream?after=``: the change feed as server-sent events, each
  with ``id:`` = its log position, so a reconnecting client resumes with
  ``Last-Event-ID``.

Callers are authenticated as the Compute API's (:func:`vmledger.api.http.endpoint`): in
the token modes another project's server is ``404 itemNotFound``, a request id is shown
only with the events of the caller's project's servers, the feeds carry only those
events, and ``verify`` is ``403 forbidden`` for non-administrators. Errors are Nova
fault bodies. Mount with ``routes += ledger_routes(engine, authenticate)``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from vmledger.api import query as q
from vmledger.api.auth import Authenticator, Principal
from vmledger.api.faults import ApiError
from vmledger.api.http import Call, Handler, base_url, endpoint
from vmledger.api.timeline import Step, render_timeline
from vmledger.api.validation import invalid_query
from vmledger.audit.ledger import LedgerEntry
from vmledger.audit.verify import Break, VerifyReport
from vmledger.domain.errors import NotFound, ServerNotFound
from vmledger.domain.server import Server
from vmledger.engine import Engine

__all__ = [
    "DEFAULT_LIMIT", "MAX_LIMIT", "MAX_WAIT", "PREFIX", "ChangeFeed", "FeedPage",
    "ledger_routes", "server_state", "verify_report",
]

log = logging.getLogger("vmledger.api.ledger")

PREFIX = "/ledger/v1"
DEFAULT_LIMIT = 100
#: larger limits are lowered to this (as Nova's ``max_limit``)
MAX_LIMIT = 1000
#: the longest long-poll ``wait`` in seconds (larger values are lowered to it)
MAX_WAIT = 30.0
#: how many log positions one read of a filtered feed looks at before answering
MAX_SCAN = 10_000
#: at most this many of a server's most recent events are drawn on its timeline
MAX_TIMELINE_STEPS = 2000
#: the client's reconnection delay announced at the start of a stream (``retry:``)
STREAM_RETRY_MS = 2000
FORBIDDEN_VERIFY = "Policy doesn't allow ledger:verify to be performed."
#: the timeline page loads nothing: no scripts, no fonts, no images, no requests
TIMELINE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_STATE_FIELDS = (
    "name", "project_id", "user_id", "flavor", "image", "host", "metadata", "description",
    "key_name", "availability_zone", "addresses", "attributes", "vm_state", "task_state",
    "power_state", "progress", "launched_at", "terminated_at", "locked", "locked_by",
    "locked_reason", "fault", "pending", "old_vm_state", "old_flavor", "migration_status",
    "confirm_deadline",
)


# --- JSON ------------------------------------------------------------------------------

def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _plain(value: Any) -> Any:
    """``value`` with datetimes (and anything else JSON lacks) as strings."""
    return json.loads(json.dumps(value, default=_json_default))


def server_state(server: Server) -> dict[str, Any]:
    """A server aggregate's full state, JSON-ready."""
    state: dict[str, Any] = {
        "id": str(server.id),
        "version": server.version,
        "status": server.status,
        "created_at": server.created_on,
        "updated_at": server.modified_on,
    }
    for name in _STATE_FIELDS:
        state[name] = getattr(server, name, None)
    result: dict[str, Any] = _plain(state)
    return result


def _break(b: Break) -> dict[str, Any]:
    return {"notification_id": b.notification_id, "server_id": b.server_id,
            "version": b.version, "kind": b.kind, "message": b.message}


def verify_report(report: VerifyReport) -> dict[str, Any]:
    """A :class:`~vmledger.audit.verify.VerifyReport` as JSON."""
    first = report.first_break
    return {
        "ok": report.ok,
        "events_checked": report.events_checked,
        "chain_rows_checked": report.chain_rows_checked,
        "servers": report.servers,
        "seconds": report.seconds,
        "events_per_second": report.events_per_second,
        "key_source": report.key_source,
        "key_id": report.key_id,
        "development_key": report.development_key,
        "head_notification_id": report.head_notification_id,
        "head_hash": report.head_hash,
        "first_break": None if first is None else _break(first),
        "breaks": [_break(b) for b in report.breaks],
        "breaks_truncated": report.breaks_truncated,
        "warnings": list(report.warnings),
        "lines": report.lines(),
    }


# --- query parameters ------------------------------------------------------------------

def _int_param(query: QueryParams, name: str, *, minimum: int,
               maximum: int | None = None) -> int | None:
    """An integer parameter (None when absent); 400 below ``minimum``; clamped above
    ``maximum``."""
    text = q.single(query, name)
    if text is None:
        return None
    return _int_value(name, text, minimum=minimum, maximum=maximum)


def _int_value(name: str, text: str, *, minimum: int, maximum: int | None = None) -> int:
    stripped = text.strip()
    if not stripped or not stripped.lstrip("-").isdigit() or stripped.count("-") > 1:
        raise invalid_query(name, text, f"{text!r} is not an integer")
    value = int(stripped)
    if value < minimum:
        raise invalid_query(name, text, f"{value} is less than the minimum of {minimum}")
    return value if maximum is None else min(value, maximum)


def _limit(query: QueryParams, default: int = DEFAULT_LIMIT) -> int:
    found = _int_param(query, "limit", minimum=1, maximum=MAX_LIMIT)
    return default if found is None else found


def _wait(query: QueryParams) -> float:
    text = q.single(query, "wait")
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise invalid_query("wait", text, f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise invalid_query("wait", text, f"{text!r} is not a number of seconds >= 0")
    return min(value, MAX_WAIT)


def _time(query: QueryParams, name: str) -> datetime | None:
    return q.time_param(name, q.single(query, name))


def _server_uuid(server_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(server_id)
    except ValueError:
        raise ServerNotFound(server_id) from None


# --- who may see what ------------------------------------------------------------------

class Owners:
    """Which project owns each server (from its first event; it never changes)."""

    def __init__(self, engine: Engine, max_size: int = 100_000) -> None:
        self.engine = engine
        self.max_size = max_size
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def remember(self, server_id: str, project_id: str) -> None:
        with self._lock:
            if len(self._known) >= self.max_size:
                self._known.clear()
            self._known[server_id] = project_id

    def of(self, server_id: str) -> str:
        """The owner project of a server (deleted ones too); ServerNotFound otherwise."""
        with self._lock:
            known = self._known.get(server_id)
        if known is not None:
            return known
        service = self.engine.service
        stored = service.recorder.select_events(_server_uuid(server_id), lte=1, limit=1)
        event = service.mapper.to_domain_event(stored[0]) if stored else None
        if not isinstance(event, Server.Requested):
            raise ServerNotFound(server_id)
        self.remember(server_id, event.owner_project_id)
        return event.owner_project_id

    def visible(self, principal: Principal, server_id: str) -> bool:
        if principal.is_admin:
            return True
        try:
            return self.of(server_id) == principal.project_id
        except ServerNotFound:
            return False

    def check(self, principal: Principal, server_id: str) -> str:
        """The canonical server id if the caller may see the server; 404 otherwise."""
        canonical = str(_server_uuid(server_id))
        owner = self.of(canonical)
        if not principal.is_admin and owner != principal.project_id:
            raise ServerNotFound(server_id)
        return canonical


# --- the change feed -------------------------------------------------------------------

@dataclass(frozen=True)
class FeedPage:
    """What one read of the log found."""

    entries: list[LedgerEntry]
    #: the position to read after next time (past events the caller is not shown too)
    next_after: int
    #: True when the read reached the end of the log
    at_end: bool


class ChangeFeed:
    """Reads the whole log in position order, keeping what a caller may see."""

    def __init__(self, engine: Engine, owners: Owners) -> None:
        self.engine = engine
        self.owners = owners

    def head(self) -> int:
        """The position of the last event in the log (0 when empty)."""
        return self.engine.service.recorder.max_notification_id() or 0

    def read(self, after: int, limit: int, principal: Principal,
             server_id: str | None = None) -> FeedPage:
        """Up to ``limit`` visible events after position ``after``, oldest first."""
        service = self.engine.service
        filtered = server_id is not None or not principal.is_admin
        page_size = max(limit, 200) if filtered else limit
        page_size = min(page_size, MAX_LIMIT)
        entries: list[LedgerEntry] = []
        cursor = after
        scanned = 0
        while scanned < MAX_SCAN:
            page = service.recorder.select_notifications(start=cursor, limit=page_size,
                                                         inclusive_of_start=False)
            if not page:
                return FeedPage(entries, cursor, at_end=True)
            scanned += len(page)
            for notification in page:
                cursor = notification.id
                event = service.mapper.to_domain_event(notification)
                if not isinstance(event, Server.Event):
                    continue  # idempotency records share the log
                entry = LedgerEntry.of(event, notification.id)
                if isinstance(event, Server.Requested):
                    self.owners.remember(entry.server_id, event.owner_project_id)
                if server_id is not None and entry.server_id != server_id:
                    continue
                if not self.owners.visible(principal, entry.server_id):
                    continue
                entries.append(entry)
                if len(entries) >= limit:
                    return FeedPage(entries, cursor, at_end=False)
            if len(page) < page_size:
                return FeedPage(entries, cursor, at_end=True)
        return FeedPage(entries, cursor, at_end=False)


# --- handlers --------------------------------------------------------------------------

def _link(request: Request, path: str, params: dict[str, Any]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{base_url(request)}{PREFIX}{path}" + (f"?{query}" if query else "")


@dataclass
class LedgerApi:
    """The handlers, sharing the owner cache and the feed's timing settings."""

    engine: Engine
    poll_interval: float = 0.2
    heartbeat: float = 15.0

    def __post_init__(self) -> None:
        self.owners = Owners(self.engine)
        self.feed = ChangeFeed(self.engine, self.owners)

    # --- one server -------------------------------------------------------------------
    async def history(self, call: Call) -> Response:
        query = call.request.query_params
        q.reject_unknown(query, ("after", "limit"))
        after = _int_param(query, "after", minimum=0) or 0
        limit = _limit(query)
        server_id = call.request.path_params["server_id"]

        def read() -> dict[str, Any]:
            sid = self.owners.check(call.principal, server_id)
            page = self.engine.history_page(sid, after=after, limit=limit)
            body: dict[str, Any] = {
                "server_id": sid,
                "entries": [e.as_dict() for e in page.entries],
                "next_after": page.next_after,
                "links": [],
            }
            if page.next_after is not None:
                body["links"].append({"rel": "next", "href": _link(
                    call.request, f"/servers/{sid}/history",
                    {"after": page.next_after, "limit": limit})})
            return body

        return JSONResponse(await call.run(read))

    async def state(self, call: Call) -> Response:
        query = call.request.query_params
        q.reject_unknown(query, ("as_of", "version"))
        at = _time(query, "as_of")
        version = _int_param(query, "version", minimum=1)
        if at is None and version is None:
            raise ApiError(400, "Give as_of (an ISO 8601 time) or version (a number >= 1).")
        server_id = call.request.path_params["server_id"]

        def read() -> dict[str, Any]:
            sid = self.owners.check(call.principal, server_id)
            server: Server | None = None
            if version is not None:
                server = self.engine.server_as_of(sid, version=version)
                if server.version < version:
                    raise NotFound(f"Instance {sid} has no version {version}; its latest "
                                   f"version is {server.version}.")
            if at is not None:
                server = self.engine.server_as_of(sid, at=at, version=version)
            assert server is not None
            return {"server": server_state(server),
                    "as_of": None if at is None else at.isoformat(), "version": version}

        return JSONResponse(await call.run(read))

    async def explain(self, call: Call) -> Response:
        query = call.request.query_params
        q.reject_unknown(query, ("last_requests",))
        last = _int_param(query, "last_requests", minimum=1)
        server_id = call.request.path_params["server_id"]

        def read() -> dict[str, Any]:
            sid = self.owners.check(call.principal, server_id)
            lines = (self.engine.explain(sid) if last is None
                     else self.engine.ledger.explain(sid, last_requests=last))
            return {"server_id": sid, "lines": lines}

        return JSONResponse(await call.run(read))

    async def timeline(self, call: Call) -> Response:
        q.reject_unknown(call.request.query_params, ())
        server_id = call.request.path_params["server_id"]

        def read() -> str:
            sid = self.owners.check(call.principal, server_id)
            return self._timeline_html(sid)

        return HTMLResponse(await call.run(read), headers={
            "Content-Security-Policy": TIMELINE_CSP, "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff"})

    def _timeline_html(self, sid: str) -> str:
        engine = self.engine
        entries = {e.version: e for e in engine.ledger.iter_history(sid)}
        steps: list[Step] = []
        server: Server | None = None
        for event in engine.service.repository.event_store.get(uuid.UUID(sid)):
            if not isinstance(event, Server.Event):
                continue
            mutated = event.mutate(server)
            server = mutated if isinstance(mutated, Server) else None
            entry = entries.get(event.originator_version)
            if server is not None and entry is not None:
                steps.append(Step(entry, server.status, server.vm_state, server.task_state))
        if server is None:
            raise ServerNotFound(sid)
        omitted = max(0, len(steps) - MAX_TIMELINE_STEPS)
        return render_timeline(server, steps[omitted:], generated_at=engine.clock.now(),
                               explanation=engine.explain(sid), omitted=omitted)

    # --- requests and verification ------------------------------------------------------
    async def request_chain(self, call: Call) -> Response:
        q.reject_unknown(call.request.query_params, ())
        request_id = call.request.path_params["request_id"]

        def read() -> dict[str, Any]:
            entries = [e for e in self.engine.causal_chain(request_id)
                       if self.owners.visible(call.principal, e.server_id)]
            if not entries:
                raise NotFound(f"Request {request_id} could not be found.")
            return {"request_id": request_id,
                    "servers": list(dict.fromkeys(e.server_id for e in entries)),
                    "entries": [e.as_dict() for e in entries]}

        return JSONResponse(await call.run(read))

    async def verify(self, call: Call) -> Response:
        if not call.principal.is_admin:
            raise ApiError(403, FORBIDDEN_VERIFY)
        query = call.request.query_params
        q.reject_unknown(query, ("anchor", "check_index"))
        kwargs: dict[str, Any] = {}
        anchor = q.single(query, "anchor")
        if anchor is not None:
            position, sep, digest = anchor.partition(":")
            if not sep or not digest:
                raise invalid_query("anchor", anchor,
                                    f"{anchor!r} is not HEAD_NOTIFICATION_ID:HEAD_HASH")
            kwargs["anchor"] = (_int_value("anchor", position, minimum=1), digest)
        check_index = q.single(query, "check_index")
        if check_index is not None:
            kwargs["check_index"] = q.bool_strict(check_index)
        report = await call.run(self.engine.verify, **kwargs)
        return JSONResponse(verify_report(report))

    # --- the change feed --------------------------------------------------------------
    def _feed_filter(self, call: Call) -> str | None:
        server_id = q.single(call.request.query_params, "server_id")
        if server_id is None:
            return None
        return self.owners.check(call.principal, server_id)

    async def _wait_for_more(self, request: Request, after: int, deadline: float) -> bool:
        """Until the log grows past ``after`` (True), or the deadline or a disconnect."""
        while True:
            if await run_in_threadpool(self.feed.head) > after:
                return True
            remaining = deadline - anyio.current_time()
            if remaining <= 0 or await request.is_disconnected():
                return False
            await anyio.sleep(min(self.poll_interval, remaining))

    async def events(self, call: Call) -> Response:
        query = call.request.query_params
        q.reject_unknown(query, ("after", "limit", "wait", "server_id"))
        after = _int_param(query, "after", minimum=0) or 0
        limit = _limit(query)
        wait = _wait(query)
        server_id = await call.run(self._feed_filter, call)
        deadline = anyio.current_time() + wait
        cursor = after
        while True:
            page = await call.run(self.feed.read, cursor, limit, call.principal, server_id)
            cursor = page.next_after
            if page.entries or not page.at_end:
                break
            if not await self._wait_for_more(call.request, cursor, deadline):
                break
        head = await call.run(self.feed.head)
        params = {"after": cursor, "limit": limit, "wait": query.get("wait"),
                  "server_id": server_id}
        return JSONResponse({
            "events": [e.as_dict() for e in page.entries],
            "next_after": cursor,
            "head": head,
            "links": [{"rel": "next", "href": _link(call.request, "/events", params)}],
        })

    async def stream(self, call: Call) -> Response:
        query = call.request.query_params
        q.reject_unknown(query, ("after", "server_id"))
        resume = call.request.headers.get("last-event-id")
        if resume is not None and resume.strip():
            if not resume.strip().isdigit():
                raise ApiError(400, f"Invalid Last-Event-ID header {resume!r}: a log "
                                    "position (an integer >= 0) was expected.")
            after = int(resume.strip())
        else:
            after = _int_param(query, "after", minimum=0) or 0
        server_id = await call.run(self._feed_filter, call)
        principal = call.principal

        async def frames() -> AsyncIterator[str]:
            yield f"retry: {STREAM_RETRY_MS}\n\n"
            cursor = after
            told = after  # the client's Last-Event-ID: the last id it was sent
            quiet_since = anyio.current_time()
            try:
                while True:
                    page = await run_in_threadpool(self.feed.read, cursor, MAX_LIMIT,
                                                   principal, server_id)
                    cursor = page.next_after
                    for entry in page.entries:
                        data = json.dumps(entry.as_dict(), separators=(",", ":"))
                        yield f"id: {entry.position}\ndata: {data}\n\n"
                        told = entry.position or told
                        quiet_since = anyio.current_time()
                    if not page.at_end:
                        continue
                    if anyio.current_time() - quiet_since >= self.heartbeat:
                        # an id without data moves the client's Last-Event-ID past the
                        # events it is not shown; no event is dispatched
                        yield ": keepalive\n\n" if cursor == told else (
                            f": keepalive\nid: {cursor}\n\n")
                        told = cursor
                        quiet_since = anyio.current_time()
                    await anyio.sleep(self.poll_interval)
            except Exception:  # the response has started: log, and end the stream
                log.exception("change feed stream failed after position %s", cursor)

        return StreamingResponse(frames(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def ledger_routes(engine: Engine, authenticate: Authenticator, *,
                  poll_interval: float = 0.2, heartbeat: float = 15.0
                  ) -> list[BaseRoute]:
    """The ``/ledger/v1`` routes over ``engine``, authenticated by ``authenticate`` (the
    same authenticator as the Compute API's). ``poll_interval`` is how often the feeds
    look for new events; ``heartbeat`` how often an idle stream says it is alive."""
    api = LedgerApi(engine, poll_interval=poll_interval, heartbeat=heartbeat)
    table: Sequence[tuple[str, Handler]] = (
        ("/servers/{server_id}/history", api.history),
        ("/servers/{server_id}/state", api.state),
        ("/servers/{server_id}/explain", api.explain),
        ("/servers/{server_id}/timeline", api.timeline),
        ("/requests/{request_id}", api.request_chain),
        ("/verify", api.verify),
        ("/events", api.events),
        ("/events/stream", api.stream),
    )
    return [Route(PREFIX + path, endpoint(engine, authenticate, handler), methods=["GET"])
            for path, handler in table]
