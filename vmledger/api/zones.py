"""``GET /os-availability-zone[/detail]``: the zone the hosts are in.

Every compute host is in the one zone ``nova`` (Nova's default zone; vmledger has no
host aggregates). The detail, for administrators, lists each host's ``nova-compute``
service: ``available`` while it is up (its agent reports) and not forced down, ``active``
unless disabled, ``updated_at`` its last report or administrative change. Nova's
``internal`` zone (its control services) has no counterpart and is not listed.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.api.views import usage_time
from vmledger.domain.commands.servers import ZONE


def _states(call: Call) -> list[dict[str, Any]]:
    return call.engine.compute_services()


async def list_zones(call: Call) -> Response:
    states = await call.run(_states, call)
    available = any(not s["disabled"] for s in states)
    return JSONBody({"availabilityZoneInfo": [
        {"zoneName": ZONE, "zoneState": {"available": available}, "hosts": None}]})


async def list_zones_detail(call: Call) -> Response:
    if not call.principal.is_admin:
        raise ApiError(403, "Policy doesn't allow os_compute_api:os-availability-zone:detail "
                            "to be performed.")
    states = await call.run(_states, call)
    hosts: dict[str, Any] = {
        s["host"]: {"nova-compute": {
            "available": s["up"] and not s["forced_down"], "active": not s["disabled"],
            "updated_at": usage_time(s["updated_at"]) if s["updated_at"] else None}}
        for s in states}
    available = any(not s["disabled"] for s in states)
    return JSONBody({"availabilityZoneInfo": [
        {"zoneName": ZONE, "zoneState": {"available": available}, "hosts": hosts}]})


__all__ = ["list_zones", "list_zones_detail"]
