"""``GET /limits``: Nova's absolute limits and what the project uses.

vmledger enforces no instance, core or RAM quota (``-1``: unlimited, as Nova writes it);
its fixed limits are reported as they are enforced: 128 metadata items per server, 100
key pairs per user. The values Nova reports for resources vmledger does not model
(security groups, floating IPs, server groups, personality files) are Nova's defaults,
with nothing used. Network fields go at 2.36, ``maxImageMeta`` at 2.39, the personality
fields at 2.57, as in Nova. An administrator may ask for another project
(``?tenant_id``); anyone else gets 403.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.domain.keypair import MAX_KEYPAIRS_PER_USER
from vmledger.domain.service import METADATA_MAX_ITEMS

UNLIMITED = -1
_NETWORK = ("maxSecurityGroupRules", "maxSecurityGroups", "maxTotalFloatingIps",
            "totalFloatingIpsUsed", "totalSecurityGroupsUsed")


def _usage(call: Call, project_id: str) -> dict[str, int]:
    ctx = call.engine.context(project_id=project_id, is_admin=False,
                              request_id=call.request_id)
    used = {"totalInstancesUsed": 0, "totalCoresUsed": 0, "totalRAMUsed": 0}
    for doc in call.engine.iter_server_docs(ctx=ctx):
        flavor = doc.get("flavor") or {}
        used["totalInstancesUsed"] += 1
        used["totalCoresUsed"] += int(flavor.get("vcpus") or 0)
        used["totalRAMUsed"] += int(flavor.get("ram") or 0)
    return used


async def show_limits(call: Call) -> Response:
    project_id = call.principal.project_id
    asked = call.request.query_params.get("tenant_id")
    if asked is not None and asked != project_id:
        if not call.principal.is_admin:
            raise ApiError(403, "Policy doesn't allow os_compute_api:limits:other_project "
                                "to be performed.")
        project_id = asked
    absolute: dict[str, Any] = {
        "maxTotalInstances": UNLIMITED, "maxTotalCores": UNLIMITED,
        "maxTotalRAMSize": UNLIMITED, "maxServerMeta": METADATA_MAX_ITEMS,
        "maxImageMeta": METADATA_MAX_ITEMS, "maxPersonality": 5,
        "maxPersonalitySize": 10240, "maxTotalKeypairs": MAX_KEYPAIRS_PER_USER,
        "maxSecurityGroups": 10, "maxSecurityGroupRules": 20, "maxTotalFloatingIps": 10,
        "totalFloatingIpsUsed": 0, "totalSecurityGroupsUsed": 0,
        "maxServerGroups": 10, "maxServerGroupMembers": 10, "totalServerGroupsUsed": 0,
        **(await call.run(_usage, call, project_id)),
    }
    if call.at_least(2, 36):
        for key in _NETWORK:
            del absolute[key]
    if call.at_least(2, 39):
        del absolute["maxImageMeta"]
    if call.at_least(2, 57):
        del absolute["maxPersonality"], absolute["maxPersonalitySize"]
    return JSONBody({"limits": {"rate": [], "absolute": absolute}})


__all__ = ["show_limits"]
