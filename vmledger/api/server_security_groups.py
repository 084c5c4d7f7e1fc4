"""``GET /servers/{id}/os-security-groups``: a server's security groups, as Nova proxies
them from the Networking API.

The server's groups are the ones its create request named (``default`` when it named
none) that exist on the Networking API shim (:mod:`vmledger.api.neutron`): each project's
``default`` group. They are shown in Nova's shape (``tenant_id``, ingress ``rules`` only,
with ``parent_group_id``, ``ip_protocol``, ``from_port``/``to_port``, ``group`` and
``ip_range``), as Nova shows Neutron's groups.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api.http import Call
from vmledger.api.neutron import security_group_doc
from vmledger.api.rendering import JSONBody
from vmledger.api.servers import owned_server


def nova_rule(rule: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    """A Neutron ingress rule as Nova shows it."""
    remote = rule.get("remote_group_id")
    cidr = rule.get("remote_ip_prefix")
    return {"id": rule["id"], "parent_group_id": group["id"],
            "ip_protocol": rule.get("protocol"), "from_port": rule.get("port_range_min"),
            "to_port": rule.get("port_range_max"),
            "group": {"name": group["name"], "tenant_id": group["project_id"]}
            if remote == group["id"] else {},
            "ip_range": {"cidr": cidr} if cidr else {}}


def nova_group(group: dict[str, Any]) -> dict[str, Any]:
    """A Neutron security group as Nova shows it (egress rules are not shown)."""
    return {"id": group["id"], "name": group["name"], "description": group["description"],
            "tenant_id": group["project_id"],
            "rules": [nova_rule(r, group) for r in group["security_group_rules"]
                      if r["direction"] == "ingress"]}


def _groups(call: Call, server_id: str) -> list[dict[str, Any]]:
    info = owned_server(call.engine, call.principal, server_id)
    names = (info.doc.get("attributes") or {}).get("security_groups") or ["default"]
    existing = {"default": security_group_doc(info.project_id)}
    return [nova_group(existing[n]) for n in names if n in existing]


async def list_server_security_groups(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    return JSONBody({"security_groups": await call.run(_groups, call, server_id)})


__all__ = ["list_server_security_groups"]
