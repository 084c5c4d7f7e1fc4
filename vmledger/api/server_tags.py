"""``/servers/{id}/tags`` (2.26+) and ``/servers/{id}/ips``, as Nova's.

Tags: ``GET`` → ``{"tags": [...]}``; ``PUT`` replaces them all (200 with the tags);
``DELETE`` removes them all (204); ``GET /tags/{tag}`` → 204 or 404; ``PUT /tags/{tag}``
→ 201 with ``Location`` when added, 204 when it was there; ``DELETE /tags/{tag}`` → 204
or 404 ``Tag x could not be found.``. A tag is 1 to 60 characters without ``/`` or
``,``; at most 50 per server (400). When tags may change is four rows of the lifecycle
table (``update tag`` …: ACTIVE, PAUSED, SUSPENDED or STOPPED with no task: else 409
``Cannot 'update tag' instance … while it is in …``); before 2.26 the routes are 404.

IPs: ``GET /ips`` → ``{"addresses": {network: [{"version", "addr"}]}}``;
``GET /ips/{network}`` → ``{network: [...]}``, 404 ``Instance is not a member of
specified network`` otherwise.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from vmledger.api import validation as val
from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.api.servers import body_or_empty, owned_server
from vmledger.api.views import server_addresses

NOT_FOUND = "The resource could not be found."


def _require_2_26(call: Call) -> None:
    if not call.at_least(2, 26):
        raise ApiError(404, NOT_FOUND)


def _tags(call: Call, server_id: str) -> list[str]:
    info = owned_server(call.engine, call.principal, server_id)
    return list((info.doc.get("attributes") or {}).get("tags") or [])


def _change(call: Call, server_id: str, action: str, tag: str | None = None,
            tags: list[str] | None = None) -> tuple[list[str], bool]:
    owned_server(call.engine, call.principal, server_id)
    return call.engine.change_tags(server_id, action, tag=tag, tags=tags, ctx=call.context())


async def list_tags(call: Call) -> Response:
    _require_2_26(call)
    server_id = call.request.path_params["server_id"]
    return JSONBody({"tags": await call.run(_tags, call, server_id)})


async def replace_tags(call: Call) -> Response:
    _require_2_26(call)
    server_id = call.request.path_params["server_id"]
    body = val.require_object(await body_or_empty(call), None)
    if "tags" not in body:
        raise val.invalid_field("tags", body, "'tags' is a required property")
    val.no_other_keys(body, "tags", ["tags"])
    tags: Any = body["tags"]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise val.invalid_field("tags", tags, f"{tags!r} is not of type 'array' of strings")
    found, _ = await call.run(_change, call, server_id, "update_tags", None, tags)
    return JSONBody({"tags": found})


async def delete_tags(call: Call) -> Response:
    _require_2_26(call)
    server_id = call.request.path_params["server_id"]
    await call.run(_change, call, server_id, "delete_tags")
    return Response(status_code=204)


async def check_tag(call: Call) -> Response:
    _require_2_26(call)
    server_id, tag = call.request.path_params["server_id"], call.request.path_params["tag"]
    if tag not in await call.run(_tags, call, server_id):
        raise ApiError(404, f"Tag {tag} could not be found.")
    return Response(status_code=204)


async def add_tag(call: Call) -> Response:
    _require_2_26(call)
    server_id, tag = call.request.path_params["server_id"], call.request.path_params["tag"]
    _, created = await call.run(_change, call, server_id, "update_tag", tag)
    if not created:
        return Response(status_code=204)
    # percent-encoded: a header is Latin-1, a tag any text
    location = call.viewer.links.versioned("servers", server_id, "tags", quote(tag, safe=""))
    return Response(status_code=201, headers={"Location": location})


async def delete_tag(call: Call) -> Response:
    _require_2_26(call)
    server_id, tag = call.request.path_params["server_id"], call.request.path_params["tag"]
    await call.run(_change, call, server_id, "delete_tag", tag)
    return Response(status_code=204)


def _addresses(call: Call, server_id: str) -> dict[str, Any]:
    info = owned_server(call.engine, call.principal, server_id)
    return server_addresses(info.doc)


async def list_ips(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    return JSONBody({"addresses": await call.run(_addresses, call, server_id)})


async def show_network_ips(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    network = call.request.path_params["network"]
    addresses = await call.run(_addresses, call, server_id)
    if network not in addresses:
        raise ApiError(404, "Instance is not a member of specified network")
    return JSONBody({network: addresses[network]})


__all__ = ["add_tag", "check_tag", "delete_tag", "delete_tags", "list_ips", "list_tags",
           "replace_tags", "show_network_ips"]
