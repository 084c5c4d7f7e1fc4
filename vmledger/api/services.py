"""``/os-services``: the compute services, one per host (administrators).

Each compute host (this process's own, those whose agents report to the shared
database, and those an administrator changed) has a ``nova-compute`` service in zone
``nova``, listed by host name; vmledger has no other Nova services (conductor,
scheduler). ``state`` is ``up`` for this process's own host and for a host whose agent
reported within the service down time (60 s; see :mod:`vmledger.projections.hosts`),
unless an administrator forced the service down; ``updated_at`` is the later of the
last report and the last administrative change (null before either). Ids are integers
(positions in that order) before 2.53 and UUIDs (stable per host) from 2.53;
``forced_down`` from 2.11. ``?host`` and ``?binary`` filter.

Changing a service (administrators; see :mod:`vmledger.domain.compute_service`): before
2.53 ``PUT /os-services/disable``, ``/enable``, ``/disable-log-reason`` and (2.11)
``/force-down`` with ``host`` and ``binary``; from 2.53 ``PUT /os-services/{id}`` with
``status``, ``disabled_reason`` (only when disabling) and ``forced_down``. A disabled or
forced-down host takes no new servers. Deleting a service is not supported.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from starlette.responses import Response

from vmledger.api import query as q
from vmledger.api.faults import ApiError
from vmledger.api.http import EMPTY, Call, read_json
from vmledger.api.rendering import JSONBody
from vmledger.api.validation import invalid_field, no_other_keys, require_object
from vmledger.api.views import usage_time
from vmledger.domain.commands.servers import ZONE

BINARY = "nova-compute"
#: the namespace of service UUIDs (uuid5 of the host name)
_NAMESPACE = uuid.UUID("6d1f2a3e-5b7c-4e8f-9a0b-1c2d3e4f5a6b")


def service_id(call: Call, index: int, host: str) -> int | str:
    """A host's compute service id: its number before 2.53, a UUID (stable) from 2.53."""
    return str(uuid.uuid5(_NAMESPACE, host)) if call.at_least(2, 53) else index


def _service(call: Call, index: int, state: dict[str, Any]) -> dict[str, Any]:
    host = state["host"]
    service: dict[str, Any] = {
        "id": service_id(call, index, host),
        "binary": BINARY, "host": host, "zone": ZONE,
        "status": "disabled" if state["disabled"] else "enabled",
        "state": "up" if state["up"] and not state["forced_down"] else "down",
        "updated_at": _time(state["updated_at"]),
        "disabled_reason": state["disabled_reason"]}
    if call.at_least(2, 11):
        service["forced_down"] = state["forced_down"]
    return service


def _time(value: Any) -> str | None:
    return usage_time(value) if isinstance(value, datetime) else None


def _admin(call: Call, rule: str) -> None:
    if not call.principal.is_admin:
        raise ApiError(403, f"Policy doesn't allow os_compute_api:os-services:{rule} to be "
                            "performed.")


def _services(call: Call) -> list[dict[str, Any]]:
    return [_service(call, index, state)
            for index, state in enumerate(call.engine.compute_services(), start=1)]


async def list_services(call: Call) -> Response:
    _admin(call, "list")
    query = call.request.query_params
    services = await call.run(_services, call)
    if "host" in query:
        services = [s for s in services if s["host"] == query["host"]]
    if "binary" in query:
        services = [s for s in services if s["binary"] == query["binary"]]
    return JSONBody({"services": services})


def _reason(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 255:
        raise invalid_field("disabled_reason", value,
                            "a reason of 1 to 255 characters is required")
    return value


def _boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in q.TRUE_STRINGS + q.FALSE_STRINGS:
        return value.strip().lower() in q.TRUE_STRINGS
    raise invalid_field(field, value, f"{value!r} is not of type 'boolean'")


def _update(call: Call, service_ref: str, body: dict[str, Any]) -> dict[str, Any]:
    """2.53: ``PUT /os-services/{uuid}`` with ``status``, ``disabled_reason``,
    ``forced_down``."""
    hosts = {str(service_id(call, i, s["host"])): s["host"]
             for i, s in enumerate(call.engine.compute_services(), start=1)}
    no_other_keys(body, "service", ["status", "disabled_reason", "forced_down"])
    if not body:
        raise ApiError(400, "At least one of status or forced_down must be specified.")
    status = body.get("status")
    if status is not None and status not in ("enabled", "disabled"):
        raise invalid_field("status", status, f"{status!r} is not one of ['enabled', "
                                              "'disabled']")
    reason = _reason(body.get("disabled_reason"))
    if reason is not None and status != "disabled":
        raise ApiError(400, "Specifying 'disabled_reason' with status 'enabled' is invalid.")
    forced = _boolean(body["forced_down"], "forced_down") if "forced_down" in body else None
    if status is None and forced is None:
        raise ApiError(400, "At least one of status or forced_down must be specified.")
    host = hosts.get(service_ref)
    if host is None:
        raise ApiError(404, f"Service {service_ref} could not be found.")
    call.engine.set_compute_service(
        host, disabled=None if status is None else status == "disabled", reason=reason,
        forced_down=forced, ctx=call.context())
    return {"service": next(s for s in _services(call) if s["host"] == host)}


def _legacy(call: Call, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """Before 2.53: ``PUT /os-services/{disable,enable,disable-log-reason,force-down}``
    with ``host`` and ``binary``."""
    if action not in ("disable", "enable", "disable-log-reason", "force-down") or (
            action == "force-down" and not call.at_least(2, 11)):
        raise ApiError(404, "Unknown action")
    host, binary = body.get("host"), body.get("binary")
    if not isinstance(host, str) or not isinstance(binary, str):
        raise ApiError(400, "Missing host or binary")
    if binary != BINARY or host not in {s["host"] for s in call.engine.compute_services()}:
        raise ApiError(404, f"Compute host {host} with binary {binary} could not be found.")
    ctx = call.context()
    if action == "force-down":
        if "forced_down" not in body:
            raise ApiError(400, "forced_down is required")
        forced = _boolean(body["forced_down"], "forced_down")
        call.engine.set_compute_service(host, forced_down=forced, ctx=ctx)
        return {"service": {"host": host, "binary": binary, "forced_down": forced}}
    reason = _reason(body.get("disabled_reason")) if action == "disable-log-reason" else None
    if action == "disable-log-reason" and reason is None:
        raise ApiError(400, "Missing disabled reason field")
    disabled = action != "enable"
    call.engine.set_compute_service(host, disabled=disabled, reason=reason, ctx=ctx)
    service: dict[str, Any] = {"host": host, "binary": binary,
                               "status": "disabled" if disabled else "enabled"}
    if reason is not None:
        service["disabled_reason"] = reason
    return {"service": service}


async def update_service(call: Call) -> Response:
    _admin(call, "update")
    raw = await read_json(call.request)
    body = require_object({} if raw is EMPTY else raw, None)
    ref = str(call.request.path_params["service_id"])
    if call.at_least(2, 53):
        return JSONBody(await call.run(_update, call, ref, body))
    return JSONBody(await call.run(_legacy, call, ref, body))


def _delete(call: Call, ref: str) -> None:
    """``DELETE /os-services/{id}``: a UUID from 2.53, an integer before (400 otherwise);
    unknown → 404; a host with servers or migrations in progress, or the one this
    process runs the agent of → 409."""
    if call.at_least(2, 53):
        try:
            uuid.UUID(ref)
        except ValueError:
            raise ApiError(400, f"Invalid uuid {ref}") from None
    elif not ref.strip().lstrip("+-").isdigit():
        raise ApiError(400, "Invalid input received: id must be an integer")
    hosts = {str(service_id(call, i, s["host"])).lower(): s["host"]
             for i, s in enumerate(call.engine.compute_services(), start=1)}
    key = ref.strip().lower() if call.at_least(2, 53) else str(int(ref))
    host = hosts.get(key)
    if host is None:
        raise ApiError(404, f"Service {ref} not found.")
    call.engine.delete_compute_service(host, ctx=call.context())


async def delete_service(call: Call) -> Response:
    _admin(call, "delete")
    await call.run(_delete, call, str(call.request.path_params["service_id"]))
    return Response(status_code=204)


__all__ = ["delete_service", "list_services", "service_id", "update_service"]
