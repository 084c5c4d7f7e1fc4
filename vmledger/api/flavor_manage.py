"""Flavor management: create, delete, describe (2.55) and extra specs, for administrators.

As Nova's ``flavor_manage.py`` and ``flavors_extraspecs.py`` (see
:mod:`vmledger.domain.flavors` for what is recorded): create answers 200 with the flavor
(a taken id or name → 409); delete 202; ``PUT /flavors/{id}`` (2.55, its
``description`` only); extra specs are read by anyone who sees the flavor and changed by
administrators (``POST`` merges, ``PUT /{key}`` sets one, ``DELETE /{key}`` 200). Others
get 403 with Nova's policy message.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api.faults import ApiError
from vmledger.api.http import EMPTY, Call, read_json
from vmledger.api.rendering import JSONBody
from vmledger.api.validation import invalid_field, no_other_keys, require_keys, require_object
from vmledger.api.views import flavor_view
from vmledger.domain.catalog import Flavor

_CREATE_FIELDS = ("name", "id", "ram", "vcpus", "disk", "OS-FLV-EXT-DATA:ephemeral", "swap",
                  "rxtx_factor", "os-flavor-access:is_public")


def _body(raw: Any, key: str) -> dict[str, Any]:
    body = require_object({} if raw is EMPTY else raw, None)
    require_keys(body, key, [key])
    no_other_keys(body, key, [key])
    return require_object(body[key], key)


async def create_flavor(call: Call) -> Response:
    fields = _body(await read_json(call.request), "flavor")
    allowed = (*_CREATE_FIELDS, "description") if call.at_least(2, 55) else _CREATE_FIELDS
    no_other_keys(fields, "flavor", allowed)
    require_keys(fields, "flavor", ["name", "ram", "vcpus", "disk"])
    flavor = await call.run(call.engine.create_flavor, fields, ctx=call.context())
    return JSONBody({"flavor": flavor_view(flavor, call.viewer)})


async def delete_flavor(call: Call) -> Response:
    await call.run(call.engine.delete_flavor, call.request.path_params["flavor_id"],
                   ctx=call.context())
    return Response(status_code=202)


async def update_flavor(call: Call) -> Response:
    if not call.at_least(2, 55):
        raise ApiError(405, "The method specified is not allowed for this resource.")
    fields = _body(await read_json(call.request), "flavor")
    require_keys(fields, "flavor", ["description"])
    no_other_keys(fields, "flavor", ["description"])
    description = fields["description"]
    if description is not None and (not isinstance(description, str)
                                    or len(description) > 65535):
        raise invalid_field("description", description,
                            "a text of at most 65535 characters or null is required")
    flavor = await call.run(call.engine.update_flavor_description,
                            call.request.path_params["flavor_id"], description,
                            ctx=call.context())
    return JSONBody({"flavor": flavor_view(flavor, call.viewer)})


def _visible(call: Call, flavor_id: str) -> Flavor:
    """The flavor as the caller may see it (hidden ones are not found for others)."""
    flavor = call.engine.flavor_for_admin(flavor_id)
    if not call.principal.is_admin and (
            flavor.disabled or not call.engine.may_use_flavor(flavor, call.context())):
        raise ApiError(404, f"Flavor {flavor_id} could not be found.")
    return flavor


def _access(flavor_id: str, projects: list[str]) -> dict[str, Any]:
    return {"flavor_access": [{"flavor_id": flavor_id, "tenant_id": p} for p in projects]}


def _list_access(call: Call, flavor_id: str) -> dict[str, Any]:
    if call.engine.flavor_for_admin(flavor_id).is_public:
        raise ApiError(404, "Access list not available for public flavors.")
    return _access(flavor_id, call.engine.flavor_access(flavor_id))


async def list_flavor_access(call: Call) -> Response:
    if not call.principal.is_admin:
        raise ApiError(403, "Policy doesn't allow os_compute_api:os-flavor-access to be "
                            "performed.")
    return JSONBody(await call.run(_list_access, call, call.request.path_params["flavor_id"]))


async def flavor_action(call: Call) -> Response:
    """``addTenantAccess`` / ``removeTenantAccess`` ``{"tenant": project}``."""
    flavor_id = call.request.path_params["flavor_id"]
    raw = await read_json(call.request)
    body = require_object({} if raw is EMPTY else raw, None)
    if len(body) != 1 or next(iter(body)) not in ("addTenantAccess", "removeTenantAccess"):
        raise ApiError(400, f"There is no such action: {', '.join(map(str, body)) or '{}'}")
    [(action, value)] = body.items()
    args = require_object(value, action)
    require_keys(args, action, ["tenant"])
    no_other_keys(args, action, ["tenant"])
    tenant = args["tenant"]
    if not isinstance(tenant, str) or not 1 <= len(tenant) <= 255:
        raise invalid_field("tenant", tenant, "a project id of 1 to 255 characters is "
                                              "required")
    change = (call.engine.add_flavor_access if action == "addTenantAccess"
              else call.engine.remove_flavor_access)
    projects = await call.run(change, flavor_id, tenant, ctx=call.context())
    return JSONBody(_access(flavor_id, projects))


async def list_extra_specs(call: Call) -> Response:
    flavor = await call.run(_visible, call, call.request.path_params["flavor_id"])
    return JSONBody({"extra_specs": dict(flavor.extra_specs)})


async def show_extra_spec(call: Call) -> Response:
    flavor_id, key = call.request.path_params["flavor_id"], call.request.path_params["key"]
    flavor = await call.run(_visible, call, flavor_id)
    if key not in flavor.extra_specs:
        raise ApiError(404, f"Flavor {flavor_id} has no extra specs with key {key}.")
    return JSONBody({key: flavor.extra_specs[key]})


async def create_extra_specs(call: Call) -> Response:
    specs = _body(await read_json(call.request), "extra_specs")
    stored = await call.run(call.engine.set_flavor_extra_specs,
                            call.request.path_params["flavor_id"], specs, ctx=call.context())
    return JSONBody({"extra_specs": stored})


async def update_extra_spec(call: Call) -> Response:
    flavor_id, key = call.request.path_params["flavor_id"], call.request.path_params["key"]
    raw = await read_json(call.request)
    body = require_object({} if raw is EMPTY else raw, None)
    if len(body) > 1:
        raise ApiError(400, "Request body contains too many items")
    if key not in body:
        raise ApiError(400, "Request body and URI mismatch")
    stored = await call.run(call.engine.set_flavor_extra_specs, flavor_id, body,
                            ctx=call.context())
    return JSONBody(stored)


async def delete_extra_spec(call: Call) -> Response:
    await call.run(call.engine.delete_flavor_extra_spec, call.request.path_params["flavor_id"],
                   call.request.path_params["key"], ctx=call.context())
    return Response(status_code=200)  # Nova's: no body, 200 (a flavor's delete is 202)


__all__ = ["create_extra_specs", "create_flavor", "delete_extra_spec", "delete_flavor",
           "flavor_action", "list_extra_specs", "list_flavor_access", "show_extra_spec",
           "update_extra_spec", "update_flavor"]
