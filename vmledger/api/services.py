"""``GET /os-services``: the compute services, one per host (administrators).

Each of the engine's hosts has a ``nova-compute`` service in zone ``nova``, enabled and
up; vmledger records no service heartbeats (``updated_at`` null) and has no other Nova
services (conductor, scheduler). Ids are integers before 2.53 and UUIDs (stable per
host) from 2.53; ``forced_down`` from 2.11. ``?host`` and ``?binary`` filter. Disabling a
service is not supported.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.responses import Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.domain.service import ZONE

BINARY = "nova-compute"
#: the namespace of service UUIDs (uuid5 of the host name)
_NAMESPACE = uuid.UUID("6d1f2a3e-5b7c-4e8f-9a0b-1c2d3e4f5a6b")


def service_id(call: Call, index: int, host: str) -> int | str:
    """A host's compute service id: its number before 2.53, a UUID (stable) from 2.53."""
    return str(uuid.uuid5(_NAMESPACE, host)) if call.at_least(2, 53) else index


def _service(call: Call, index: int, host: str) -> dict[str, Any]:
    service: dict[str, Any] = {
        "id": service_id(call, index, host),
        "binary": BINARY, "host": host, "zone": ZONE, "status": "enabled",
        "state": "up", "updated_at": None, "disabled_reason": None}
    if call.at_least(2, 11):
        service["forced_down"] = False
    return service


async def list_services(call: Call) -> Response:
    if not call.principal.is_admin:
        raise ApiError(403, "Policy doesn't allow os_compute_api:os-services:list to be "
                            "performed.")
    query = call.request.query_params
    services = [_service(call, index, host)
                for index, host in enumerate(call.engine.service.hosts, start=1)]
    if "host" in query:
        services = [s for s in services if s["host"] == query["host"]]
    if "binary" in query:
        services = [s for s in services if s["binary"] == query["binary"]]
    return JSONBody({"services": services})


__all__ = ["list_services", "service_id"]
