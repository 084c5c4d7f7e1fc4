"""``/servers/{id}/os-instance-actions``: what was asked of a server, and what happened.

As ``nova/api/openstack/compute/instance_actions.py``:

- list: ``{"instanceActions": [...]}`` newest first, each with ``action``,
  ``instance_uuid``, ``request_id``, ``user_id``, ``project_id``, ``start_time`` and
  ``message``; ``updated_at`` from 2.58. From 2.58 ``limit``, ``marker`` (a request id;
  unknown → 400) and ``changes-since`` are accepted, ``changes-before`` from 2.66, and any
  other query parameter is a 400; a full page carries a ``links`` next link.
- show: ``{"instanceAction": {..., "events": [...]}}``; unknown request id → 404
  ``Action <id> not found``. Events (newest first) are shown to administrators at every
  microversion and to everyone from 2.51; ``traceback`` only to administrators;
  ``hostId`` from 2.62 for everyone and ``host`` for administrators; ``details`` from 2.84
  for administrators.
- deleted servers are readable from 2.21 (404 before), so ``create`` and ``delete`` can
  be listed after a delete.

Timestamps carry microseconds and no zone designator, as Nova's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.responses import JSONResponse, Response

from vmledger.api import query as q
from vmledger.api.catalog import MAX_LIMIT, next_link
from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.validation import non_negative_int
from vmledger.api.views import host_id, usage_time
from vmledger.domain.errors import NotFound

_QUERY_V258 = ("limit", "marker", "changes-since")
_QUERY_V266 = (*_QUERY_V258, "changes-before")


def _scope(call: Call) -> Any:
    """The caller as an engine context: other projects' servers are not found, except
    by administrators."""
    return call.engine.context(user_id=call.principal.user_id,
                               project_id=call.principal.project_id,
                               is_admin=call.principal.is_admin,
                               request_id=call.request_id)


def _time(value: Any) -> str | None:
    return usage_time(value) if isinstance(value, datetime) else value


def action_view(raw: dict[str, Any], call: Call) -> dict[str, Any]:
    view: dict[str, Any] = {
        "action": raw["action"],
        "instance_uuid": raw["server_id"],
        "request_id": raw["request_id"],
        "user_id": raw.get("user_id"),
        "project_id": raw.get("project_id"),
        "start_time": _time(raw.get("start_time")),
        "message": raw.get("message"),
    }
    if call.at_least(2, 58):
        view["updated_at"] = _time(raw.get("updated_at") or raw.get("start_time"))
    return view


def event_view(raw: dict[str, Any], call: Call, project_id: str) -> dict[str, Any]:
    admin = call.principal.is_admin
    event: dict[str, Any] = {
        "event": raw["event"],
        "start_time": _time(raw.get("start_time")),
        "finish_time": _time(raw.get("finish_time")),
        "result": raw.get("result"),
    }
    if admin:
        event["traceback"] = raw.get("traceback")
    # events recorded by the API itself (lock, unlock) ran on this service's host
    host = str(raw.get("host") or call.engine.host)
    if call.at_least(2, 62):
        if admin:
            event["host"] = host
        event["hostId"] = host_id(project_id, host)
    if admin and call.at_least(2, 84):
        event["details"] = raw.get("details")
    return event


def _updated(raw: dict[str, Any]) -> datetime | None:
    value = raw.get("updated_at") or raw.get("start_time")
    return value if isinstance(value, datetime) else None


def _list(call: Call, server_id: str) -> tuple[list[dict[str, Any]], int]:
    actions = call.engine.instance_actions(server_id, ctx=_scope(call),
                                           include_deleted=call.at_least(2, 21))
    if not call.at_least(2, 58):
        return actions, 0
    query = call.request.query_params
    q.reject_unknown(query, _QUERY_V266 if call.at_least(2, 66) else _QUERY_V258)
    limit = MAX_LIMIT
    raw_limit = q.single(query, "limit")
    if raw_limit is not None:
        limit = min(non_negative_int(raw_limit, "limit"), MAX_LIMIT)
    since, before = q.time_window(query, before_allowed=call.at_least(2, 66), multi=False)
    if since is not None:
        actions = [a for a in actions if (t := _updated(a)) is not None and t >= since]
    if before is not None:
        actions = [a for a in actions if (t := _updated(a)) is not None and t <= before]
    marker = q.single(query, "marker")
    if marker is not None:
        ids = [a["request_id"] for a in actions]
        if marker not in ids:
            # Nova looks the marker up among all the server's actions, then pages the
            # filtered ones: a marker filtered out still exists
            try:
                call.engine.instance_action(server_id, marker, ctx=_scope(call))
            except NotFound:
                raise ApiError(400, f"Marker {marker} could not be found.") from None
            return [], limit
        actions = actions[ids.index(marker) + 1:]
    return actions[:limit], limit


async def list_instance_actions(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    page, size = await call.run(_list, call, server_id)
    body: dict[str, Any] = {"instanceActions": [action_view(a, call) for a in page]}
    if call.at_least(2, 58):
        links = next_link(call, f"servers/{server_id}/os-instance-actions", page, size,
                          page[-1]["request_id"] if page else "")
        if links:
            body["links"] = links
    return JSONResponse(body)


def _show(call: Call, server_id: str, request_id: str) -> tuple[dict[str, Any], str]:
    # an unknown (or hidden) server is "Instance ... could not be found", checked first
    raw = call.engine.instance_action(server_id, request_id, ctx=_scope(call),
                                      include_deleted=call.at_least(2, 21))
    return raw, call.principal.project_id


async def show_instance_action(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    request_id = call.request.path_params["request_id"]
    raw, project_id = await call.run(_show, call, server_id, request_id)
    action = action_view(raw, call)
    if call.principal.is_admin or call.at_least(2, 51):
        events = list(raw.get("events") or [])
        # Nova orders events newest first (created_at desc, id desc)
        events.reverse()
        action["events"] = [event_view(e, call, project_id) for e in events]
    return JSONResponse({"instanceAction": action})


__all__ = ["list_instance_actions", "show_instance_action"]
