"""``/servers/{id}/metadata``: a server's metadata items, as Nova's server metadata API.

- ``GET /metadata`` → ``{"metadata": {...}}``; ``POST`` merges the body's items,
  ``PUT`` replaces them all (both 200 with the whole metadata);
- ``GET /metadata/{key}`` → ``{"meta": {key: value}}``; ``PUT`` sets one item (the body's
  one key must be the URL's: else 400 ``Request body and URI mismatch``, two or more:
  400 ``Request body contains too many items``); ``DELETE`` → 204; an unknown key: 404
  ``Metadata item was not found``.
- Keys are 1 to 255 characters, values strings of at most 255; more than 128 items: 403.
  Changes follow the lifecycle table (``update_metadata`` / ``delete_metadata``: not
  while building, in ERROR, or with a task in flight: 409; a locked server: 409 for
  non-administrators) and are recorded as ``Updated`` events with the request id.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api import validation as val
from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.api.servers import body_or_empty, owned_server


def _metadata(call: Call, server_id: str) -> dict[str, str]:
    info = owned_server(call.engine, call.principal, server_id)
    return dict(info.doc.get("metadata") or {})


def _items(body: Any, key: str) -> dict[str, Any]:
    body = val.require_object(body, None)
    if key not in body:
        raise val.invalid_field(key, body, f"'{key}' is a required property")
    val.no_other_keys(body, key, [key])
    items = val.require_object(body[key], key)
    for name, value in items.items():
        if not isinstance(value, str):
            raise val.invalid_field(f"{key}/{name}", value,
                                    f"{value!r} is not of type 'string'")
    return items


async def list_metadata(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    return JSONBody({"metadata": await call.run(_metadata, call, server_id)})


def _set(call: Call, server_id: str, items: dict[str, str], replace: bool) -> dict[str, str]:
    owned_server(call.engine, call.principal, server_id)
    return call.engine.set_metadata(server_id, items, replace=replace, ctx=call.context())


async def update_metadata(call: Call) -> Response:
    """``POST``: merge."""
    server_id = call.request.path_params["server_id"]
    items = _items(await body_or_empty(call), "metadata")
    return JSONBody({"metadata": await call.run(_set, call, server_id, items, False)})


async def replace_metadata(call: Call) -> Response:
    """``PUT``: replace all."""
    server_id = call.request.path_params["server_id"]
    items = _items(await body_or_empty(call), "metadata")
    return JSONBody({"metadata": await call.run(_set, call, server_id, items, True)})


async def show_metadata_item(call: Call) -> Response:
    server_id, key = call.request.path_params["server_id"], call.request.path_params["key"]
    metadata = await call.run(_metadata, call, server_id)
    if key not in metadata:
        raise ApiError(404, "Metadata item was not found")
    return JSONBody({"meta": {key: metadata[key]}})


async def set_metadata_item(call: Call) -> Response:
    server_id, key = call.request.path_params["server_id"], call.request.path_params["key"]
    items = _items(await body_or_empty(call), "meta")
    if len(items) > 1:
        raise ApiError(400, "Request body contains too many items")
    if key not in items:
        raise ApiError(400, "Request body and URI mismatch")
    await call.run(_set, call, server_id, items, False)
    return JSONBody({"meta": items})


def _delete(call: Call, server_id: str, key: str) -> None:
    owned_server(call.engine, call.principal, server_id)
    call.engine.delete_metadata(server_id, key, ctx=call.context())


async def delete_metadata_item(call: Call) -> Response:
    server_id, key = call.request.path_params["server_id"], call.request.path_params["key"]
    await call.run(_delete, call, server_id, key)
    return Response(status_code=204)


__all__ = ["delete_metadata_item", "list_metadata", "replace_metadata", "set_metadata_item",
           "show_metadata_item", "update_metadata"]
