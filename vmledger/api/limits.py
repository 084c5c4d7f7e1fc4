"""``GET /limits``: Nova's absolute limits and what the project uses.

The limits are the project's quotas (:mod:`vmledger.domain.quota`: unlimited servers,
cores and RAM unless an administrator set them, Nova's defaults for the rest);
``maxImageMeta`` is the fixed limit on an image's metadata (128). The values for
resources vmledger does not model (security groups, floating IPs, server groups,
personality files) are their quotas, with nothing used. Network fields go at 2.36,
``maxImageMeta`` at 2.39, the personality fields at 2.57, as in Nova. An administrator
may ask for another project (``?tenant_id``); anyone else gets 403.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.domain.commands.validation import METADATA_MAX_ITEMS

UNLIMITED = -1
_NETWORK = ("maxSecurityGroupRules", "maxSecurityGroups", "maxTotalFloatingIps",
            "totalFloatingIpsUsed", "totalSecurityGroupsUsed")


def _absolute(call: Call, project_id: str) -> dict[str, Any]:
    limits = call.engine.quota_limits(project_id)
    used = call.engine.quota_usage(project_id)
    return {
        "maxTotalInstances": limits["instances"], "maxTotalCores": limits["cores"],
        "maxTotalRAMSize": limits["ram"], "maxServerMeta": limits["metadata_items"],
        "maxImageMeta": METADATA_MAX_ITEMS, "maxPersonality": limits["injected_files"],
        "maxPersonalitySize": limits["injected_file_content_bytes"],
        "maxTotalKeypairs": limits["key_pairs"],
        "maxSecurityGroups": limits["security_groups"],
        "maxSecurityGroupRules": limits["security_group_rules"],
        "maxTotalFloatingIps": limits["floating_ips"],
        "totalFloatingIpsUsed": 0, "totalSecurityGroupsUsed": 0,
        "maxServerGroups": limits["server_groups"],
        "maxServerGroupMembers": limits["server_group_members"], "totalServerGroupsUsed": 0,
        "totalInstancesUsed": used["instances"], "totalCoresUsed": used["cores"],
        "totalRAMUsed": used["ram"],
    }


async def show_limits(call: Call) -> Response:
    project_id = call.principal.project_id
    asked = call.request.query_params.get("tenant_id")
    if asked is not None and asked != project_id:
        if not call.principal.is_admin:
            raise ApiError(403, "Policy doesn't allow os_compute_api:limits:other_project "
                                "to be performed.")
        project_id = asked
    absolute = await call.run(_absolute, call, project_id)
    if call.at_least(2, 36):
        for key in _NETWORK:
            del absolute[key]
    if call.at_least(2, 39):
        del absolute["maxImageMeta"]
    if call.at_least(2, 57):
        del absolute["maxPersonality"], absolute["maxPersonalitySize"]
    return JSONBody({"limits": {"rate": [], "absolute": absolute}})


__all__ = ["show_limits"]
