"""``/os-hypervisors``: the compute nodes, for administrators.

As ``nova/api/openstack/compute/hypervisors.py``. The engine's host is one compute node
(:meth:`vmledger.engine.Engine.hypervisors`): what its hypervisor reports (type, version,
capacity, address, CPU, uptime) and what the servers view places on it.

- list (``id``, ``hypervisor_hostname``, ``state``, ``status``) and detail (plus type,
  version, ``host_ip``, ``service``; the capacity and usage fields and ``cpu_info`` — a
  JSON text before 2.28, an object from 2.28 — until 2.87; ``uptime`` from 2.88);
- ids are numbers before 2.53 and UUIDs (stable per host) from 2.53; show validates them
  as Nova (not a number before 2.53 → 404, not a UUID from 2.53 → 400);
- 2.33: ``limit`` and ``marker`` (an id), ``hypervisors_links``; 2.53:
  ``hypervisor_hostname_pattern`` (a substring; nothing matching → 404; not with paging →
  400) and ``with_servers``, other parameters → 400; 2.75: ``servers`` always present
  (maybe empty) when asked for;
- until 2.87 ``/statistics`` (sums over the nodes) and ``/{id}/uptime``; until 2.52
  ``/{pattern}/search`` and ``/{pattern}/servers``. Beyond their range: 404.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.responses import Response

from vmledger.api import query as q
from vmledger.api.catalog import MAX_LIMIT, next_link
from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.api.services import service_id
from vmledger.api.validation import non_negative_int

#: the namespace of compute node UUIDs (uuid5 of the host name)
_NAMESPACE = uuid.UUID("3c1b6f0e-8d2a-4b7e-a5c4-9e0f1d2b3a47")
_QUERY_V253 = ("limit", "marker", "hypervisor_hostname_pattern", "with_servers")
_STATISTICS = ("vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
               "local_gb_used", "free_ram_mb", "free_disk_gb", "current_workload",
               "running_vms", "disk_available_least")
_NOT_FOUND = "The resource could not be found."

Node = tuple[int, dict[str, Any]]  # (number, the engine's report)


def _admin(call: Call, rule: str) -> None:
    if not call.principal.is_admin:
        raise ApiError(403, f"Policy doesn't allow os_compute_api:os-hypervisors:{rule} to "
                            "be performed.")


def _gate(call: Call, *, until: tuple[int, int]) -> None:
    """Routes Nova removed after ``until``: 404 beyond it."""
    if call.at_least(until[0], until[1] + 1):
        raise ApiError(404, _NOT_FOUND)


def _id(call: Call, number: int, host: str) -> int | str:
    return str(uuid.uuid5(_NAMESPACE, host)) if call.at_least(2, 53) else number


def _nodes(call: Call, *, servers: bool = False) -> list[Node]:
    """Every node; each one's servers listed only with ``servers`` (their cost grows
    with the host's servers, the rest of a node's figures do not)."""
    return list(enumerate(call.engine.hypervisors(with_servers=servers), start=1))


def _view(call: Call, node: Node, *, detail: bool, with_servers: bool = False,
          servers: bool = False) -> dict[str, Any]:
    number, h = node
    view: dict[str, Any] = {"id": _id(call, number, h["host"]),
                            "hypervisor_hostname": h["hypervisor_hostname"],
                            "state": h["state"], "status": h["status"]}
    if detail:
        view.update(hypervisor_type=h["hypervisor_type"],
                    hypervisor_version=h["hypervisor_version"], host_ip=h["host_ip"],
                    service={"id": service_id(call, number, h["host"]), "host": h["host"],
                             "disabled_reason": h.get("disabled_reason")})
        if not call.at_least(2, 88):
            view.update({field: h[field] for field in _STATISTICS})
            view["cpu_info"] = (h["cpu_info"] if call.at_least(2, 28)
                                else json.dumps(h["cpu_info"]))
        else:
            view["uptime"] = h["uptime"]
    if (with_servers or servers) and h["servers"]:
        view["servers"] = [{"name": s["name"], "uuid": s["uuid"]} for s in h["servers"]]
    elif with_servers and call.at_least(2, 75):
        view["servers"] = []
    return view


def _matching(nodes: list[Node], pattern: str) -> list[Node]:
    """Nova's ``hypervisor_hostname LIKE %pattern%``; none → 404."""
    wanted = pattern.casefold()
    found = [n for n in nodes if wanted in n[1]["hypervisor_hostname"].casefold()]
    if not found:
        raise ApiError(404, f"No hypervisor matching '{pattern}' could be found.")
    return found


def _list(call: Call, detail: bool) -> dict[str, Any]:
    query = call.request.query_params
    paged = call.at_least(2, 33)
    pattern, with_servers, marker, limit = None, False, None, MAX_LIMIT
    if call.at_least(2, 53):
        q.reject_unknown(query, _QUERY_V253)
        raw_limit, marker = q.single(query, "limit"), q.single(query, "marker")
        pattern = q.single(query, "hypervisor_hostname_pattern")
        if pattern is not None and not 0 < len(pattern) <= 255:
            raise ApiError(400, "Invalid input for query parameters "
                                f"hypervisor_hostname_pattern. Value: {pattern}.")
        raw = q.single(query, "with_servers")
        with_servers = raw is not None and q.bool_strict(raw)
    elif paged:
        raw_limit, marker = q.last(query, "limit"), q.last(query, "marker")
    else:
        raw_limit = None
    if raw_limit is not None:
        limit = min(non_negative_int(raw_limit, "limit"), MAX_LIMIT)
    nodes = _nodes(call, servers=with_servers)
    if pattern is not None:
        if raw_limit is not None or marker:
            raise ApiError(400, "Paging over hypervisors with the "
                                "hypervisor_hostname_pattern query parameter is not "
                                "supported.")
        nodes = _matching(nodes, pattern)
        paged = False
    elif paged:
        if marker is not None:
            ids = [str(_id(call, n, h["host"])) for n, h in nodes]
            if marker not in ids:
                raise ApiError(400, f"marker [{marker}] not found")
            nodes = nodes[ids.index(marker) + 1:]
        nodes = nodes[:limit]
    views = [_view(call, n, detail=detail, with_servers=with_servers) for n in nodes]
    body: dict[str, Any] = {"hypervisors": views}
    if paged and views:
        links = next_link(call, "os-hypervisors/detail" if detail else "os-hypervisors",
                          views, limit, str(views[-1]["id"]))
        if links:
            body["hypervisors_links"] = links
    return body


async def list_hypervisors(call: Call) -> Response:
    _admin(call, "list")
    return JSONBody(await call.run(_list, call, False))


async def list_hypervisors_detail(call: Call) -> Response:
    _admin(call, "list-detail")
    return JSONBody(await call.run(_list, call, True))


def _find(call: Call, hypervisor_id: str, *, servers: bool = False) -> Node:
    """The node with this id, validated as Nova does for the microversion."""
    missing = ApiError(404, f"Hypervisor with ID '{hypervisor_id}' could not be found.")
    if call.at_least(2, 53):
        try:
            uuid.UUID(hypervisor_id)
        except ValueError:
            raise ApiError(400, f"Invalid uuid {hypervisor_id}") from None
    elif not hypervisor_id.strip().lstrip("+-").isdigit():
        raise missing
    for node in _nodes(call, servers=servers):
        if str(_id(call, node[0], node[1]["host"])).lower() == hypervisor_id.strip().lower():
            return node
    raise missing


def _show(call: Call, hypervisor_id: str) -> dict[str, Any]:
    with_servers = False
    if call.at_least(2, 53):
        query = call.request.query_params
        q.reject_unknown(query, ("with_servers",))
        raw = q.single(query, "with_servers")
        with_servers = raw is not None and q.bool_strict(raw)
    node = _find(call, hypervisor_id, servers=with_servers)
    return {"hypervisor": _view(call, node, detail=True, with_servers=with_servers)}


async def show_hypervisor(call: Call) -> Response:
    _admin(call, "show")
    return JSONBody(await call.run(_show, call, str(call.request.path_params["id"])))


def _uptime(call: Call, hypervisor_id: str) -> dict[str, Any]:
    node = _find(call, hypervisor_id)
    uptime = node[1]["uptime"]
    if uptime is None:
        raise ApiError(501, "Feature not supported.")
    return {"hypervisor": {**_view(call, node, detail=False), "uptime": uptime}}


async def show_uptime(call: Call) -> Response:
    _gate(call, until=(2, 87))
    _admin(call, "uptime")
    return JSONBody(await call.run(_uptime, call, str(call.request.path_params["id"])))


def _statistics(call: Call) -> dict[str, Any]:
    nodes = _nodes(call)
    totals = {field: sum(int(h[field] or 0) for _, h in nodes) for field in _STATISTICS}
    return {"hypervisor_statistics": {"count": len(nodes), **totals}}


async def show_statistics(call: Call) -> Response:
    _gate(call, until=(2, 87))
    _admin(call, "statistics")
    return JSONBody(await call.run(_statistics, call))


def _search(call: Call, pattern: str, servers: bool) -> dict[str, Any]:
    nodes = _matching(_nodes(call, servers=servers), pattern)
    return {"hypervisors": [_view(call, n, detail=False, servers=servers) for n in nodes]}


async def search_hypervisors(call: Call) -> Response:
    _gate(call, until=(2, 52))
    _admin(call, "search")
    return JSONBody(await call.run(_search, call, str(call.request.path_params["pattern"]),
                                   False))


async def hypervisor_servers(call: Call) -> Response:
    _gate(call, until=(2, 52))
    _admin(call, "servers")
    return JSONBody(await call.run(_search, call, str(call.request.path_params["pattern"]),
                                   True))


__all__ = ["hypervisor_servers", "list_hypervisors", "list_hypervisors_detail",
           "search_hypervisors", "show_hypervisor", "show_statistics", "show_uptime"]
