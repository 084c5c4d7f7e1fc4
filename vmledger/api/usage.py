"""``/os-simple-tenant-usage``: what each project's servers used over a period.

As ``nova/api/openstack/compute/simple_tenant_usage.py``:

- ``start`` and ``end`` (first values) as ``YYYY-MM-DDTHH:MM:SS[.ffffff]`` or
  ``YYYY-MM-DD HH:MM:SS.ffffff``, UTC; either missing means now; anything else → 400
  ``Invalid datetime string: Datetime is in invalid format``; ``start`` after ``end``
  (or equal to it, when given) → 400; an ``end`` in the future is cut to now.
- list (administrators; others 403): one entry per project with totals (hours, and
  hours times vCPUs, RAM MB and disk GB); each server's usage too with ``detailed=1``
  (or ``true``, which openstacksdk sends: Nova takes only ``1``).
- show (``/{project_id}``: administrators, or members of that project): the project's
  entry with its servers' usages, ``{}`` when nothing ran.
- from 2.40 ``limit`` (≤ 1000) and ``marker`` (a server id; unknown → 400) page the
  servers (by project, then id), with ``tenant_usages_links`` / ``tenant_usage_links``;
  from 2.75 any other parameter is a 400.

See :mod:`vmledger.projections.usage` for what a server's usage is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.responses import Response

from vmledger.api import query as q
from vmledger.api.catalog import MAX_LIMIT, next_link
from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.api.validation import non_negative_int
from vmledger.projections.store import MarkerNotFound
from vmledger.projections.usage import tenant_usages

COLLECTION = "os-simple-tenant-usage"
_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S.%f")
_QUERY_V275_INDEX = ("start", "end", "detailed", "limit", "marker")
_QUERY_V275_SHOW = ("start", "end", "limit", "marker")


def _first(call: Call, name: str) -> str | None:
    # Nova reads these with parse_qs: blank values count as absent, the first one wins
    values = parse_qs(call.request.url.query).get(name)
    return values[0] if values else None


def _parse(text: str | None, now: datetime) -> datetime:
    if not text:
        return now
    for fmt in _FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ApiError(400, "Invalid datetime string: Datetime is in invalid format")


def _period(call: Call, now: datetime) -> tuple[datetime, datetime]:
    start_text, end_text = _first(call, "start"), _first(call, "end")
    start, stop = _parse(start_text, now), _parse(end_text, now)
    # (Nova reads the clock once per missing value: both missing is an empty period)
    if start > stop or (start == stop and (start_text or end_text)):
        raise ApiError(400, "Invalid start time. The start time cannot occur after the "
                            "end time.")
    return start, min(stop, now)


def _paging(call: Call) -> tuple[int, str | None]:
    if not call.at_least(2, 40):
        return MAX_LIMIT, None
    query = call.request.query_params
    limit = MAX_LIMIT
    raw = q.last(query, "limit")
    if raw is not None:
        limit = min(non_negative_int(raw, "limit"), MAX_LIMIT)
    return limit, q.last(query, "marker")


def _json(value: Any) -> Any:
    """Naive datetimes as Nova's JSON writes them (``isoformat()``)."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _usages(call: Call, project_id: str | None, detailed: bool, names: tuple[str, ...]
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    if call.at_least(2, 75):
        q.reject_unknown(call.request.query_params, names)
    limit, marker = _paging(call)
    now = call.engine.clock.now()
    start, stop = _period(call, now)
    try:
        servers = call.engine.usage(start, stop, project_id=project_id, limit=limit,
                                    marker=marker)
    except MarkerNotFound:
        raise ApiError(400, f"Marker {marker} could not be found.") from None
    return tenant_usages(servers, start, stop, detailed=detailed), servers, limit


async def list_usage(call: Call) -> Response:
    if not call.principal.is_admin:
        raise ApiError(403, "Policy doesn't allow os_compute_api:os-simple-tenant-usage:"
                            "list to be performed.")
    # Nova takes only "1"; openstacksdk (and so the openstack CLI) sends "True" and then
    # gets no server list from Nova: any true spelling counts here
    detailed = q.bool_lenient(_first(call, "detailed") or "")
    usages, servers, limit = await call.run(_usages, call, None, detailed,
                                            _QUERY_V275_INDEX)
    body: dict[str, Any] = {"tenant_usages": _json(usages)}
    if call.at_least(2, 40) and servers:
        links = next_link(call, COLLECTION, servers, limit, servers[-1]["instance_id"])
        if links:
            body["tenant_usages_links"] = links
    return JSONBody(body)


async def show_usage(call: Call) -> Response:
    project_id = str(call.request.path_params["tenant_id"])
    if not call.principal.is_admin and call.principal.project_id != project_id:
        raise ApiError(403, "Policy doesn't allow os_compute_api:os-simple-tenant-usage:"
                            "show to be performed.")
    usages, servers, limit = await call.run(_usages, call, project_id, True,
                                            _QUERY_V275_SHOW)
    body: dict[str, Any] = {"tenant_usage": _json(usages[0]) if usages else {}}
    if call.at_least(2, 40) and servers:
        links = next_link(call, f"{COLLECTION}/{project_id}", servers, limit,
                          servers[-1]["instance_id"])
        if links:
            body["tenant_usage_links"] = links
    return JSONBody(body)


__all__ = ["list_usage", "show_usage"]
