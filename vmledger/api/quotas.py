"""``/os-quota-sets``: a project's limits (see :mod:`vmledger.domain.quota`).

As ``nova/api/openstack/compute/quota_sets.py``:

- show and ``/detail`` (``in_use``, ``limit``, ``reserved`` 0): administrators, or
  members of that project (others 403); ``/defaults``: anyone;
- update (``PUT``, administrators): ``{"quota_set": {resource: integer ≥ -1, "force"?}}``;
  a limit below what the project uses → 400 unless ``force``; answers the limits;
- delete (administrators): back to the defaults, 202;
- the network limits (``fixed_ips``, ``floating_ips``, ``security_groups``,
  ``security_group_rules``) are shown and accepted until 2.35, the injected-file ones
  until 2.56; from 2.75 unknown query parameters → 400.

Per-user quotas are not supported: ``?user_id`` shows the project's limits, and setting
or deleting them for a user is a 400.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api import query as q
from vmledger.api.faults import ApiError
from vmledger.api.http import EMPTY, Call, read_json
from vmledger.api.rendering import JSONBody
from vmledger.api.validation import require_object
from vmledger.domain import quota as quotas


def _resources(call: Call) -> tuple[str, ...]:
    hidden: tuple[str, ...] = ()
    if call.at_least(2, 36):
        hidden += quotas.NETWORK
    if call.at_least(2, 57):
        hidden += quotas.INJECTED
    return tuple(r for r in quotas.DEFAULTS if r not in hidden)


def _policy(call: Call, rule: str, project_id: str | None = None) -> None:
    if call.principal.is_admin or (project_id is not None
                                   and call.principal.project_id == project_id):
        return
    raise ApiError(403, f"Policy doesn't allow os_compute_api:os-quota-sets:{rule} to be "
                        "performed.")


def _query(call: Call) -> None:
    if call.at_least(2, 75):
        q.reject_unknown(call.request.query_params, ("user_id",))


def _show(call: Call, project_id: str, detail: bool) -> dict[str, Any]:
    limits = call.engine.quota_limits(project_id)
    body: dict[str, Any] = {"id": project_id}
    if detail:
        used = call.engine.quota_usage(project_id)
        for resource in _resources(call):
            body[resource] = {"in_use": used.get(resource, 0), "limit": limits[resource],
                              "reserved": 0}
    else:
        body.update({resource: limits[resource] for resource in _resources(call)})
    return {"quota_set": body}


async def show_quotas(call: Call) -> Response:
    project_id = str(call.request.path_params["quota_project_id"])
    _policy(call, "show", project_id)
    _query(call)
    return JSONBody(await call.run(_show, call, project_id, False))


async def show_quota_details(call: Call) -> Response:
    project_id = str(call.request.path_params["quota_project_id"])
    _policy(call, "detail", project_id)
    _query(call)
    return JSONBody(await call.run(_show, call, project_id, True))


async def show_default_quotas(call: Call) -> Response:
    project_id = str(call.request.path_params["quota_project_id"])
    defaults = await call.run(call.engine.quota_class, quotas.DEFAULT_CLASS)
    return JSONBody({"quota_set": {"id": project_id, **{
        resource: defaults[resource] for resource in _resources(call)}}})


def _no_user_quotas(call: Call) -> None:
    _query(call)
    if "user_id" in call.request.query_params:
        raise ApiError(400, "Quotas of a single user are not supported by vmledger: "
                            "set the project's")


def _body(body: Any, key: str) -> dict[str, Any]:
    """``{key: {...}}`` and nothing else, as Nova's schemas require."""
    body = require_object(body, None)
    if set(body) != {key}:
        extra = sorted(set(body) - {key})
        raise ApiError(400, f"Invalid input for field/attribute {key}. "
                            + (f"Additional properties are not allowed ('{extra[0]}' was "
                               f"unexpected)" if extra else f"'{key}' is a required "
                                                            "property"))
    return dict(require_object(body[key], key))


def _update(call: Call, project_id: str, body: Any) -> dict[str, Any]:
    values = _body(body, "quota_set")
    force = values.pop("force", False)
    if not isinstance(force, bool):
        if isinstance(force, str) and force.strip().lower() in q.TRUE_STRINGS + q.FALSE_STRINGS:
            force = force.strip().lower() in q.TRUE_STRINGS
        else:
            raise ApiError(400, f"Invalid input for field/attribute force. Value: {force}. "
                                f"{force!r} is not of type 'boolean'")
    checked = quotas.check_limits(values, _resources(call))
    limits = call.engine.set_quotas(project_id, checked, force=force, ctx=call.context())
    return {"quota_set": {resource: limits[resource] for resource in _resources(call)}}


async def update_quotas(call: Call) -> Response:
    project_id = str(call.request.path_params["quota_project_id"])
    _policy(call, "update")
    _no_user_quotas(call)
    body = await read_json(call.request)
    return JSONBody(await call.run(_update, call, project_id, {} if body is EMPTY else body))


async def delete_quotas(call: Call) -> Response:
    project_id = str(call.request.path_params["quota_project_id"])
    _policy(call, "delete")
    _no_user_quotas(call)
    await call.run(call.engine.revert_quotas, project_id, ctx=call.context())
    return Response(status_code=202)


# --- /os-quota-class-sets ------------------------------------------------------------
def _class_resources(call: Call) -> tuple[str, ...]:
    """Nova's quota-class resources per microversion: before 2.50 without the server
    group limits; from 2.50 without the network ones; from 2.57 without the injected
    files ones."""
    if not call.at_least(2, 50):
        hidden: tuple[str, ...] = ("server_groups", "server_group_members")
    else:
        hidden = quotas.NETWORK
        if call.at_least(2, 57):
            hidden += quotas.INJECTED
    return tuple(r for r in quotas.DEFAULTS if r not in hidden)


def _class_policy(call: Call, rule: str) -> None:
    if not call.principal.is_admin:
        raise ApiError(403, f"Policy doesn't allow os_compute_api:os-quota-class-sets:{rule} "
                            "to be performed.")


async def show_quota_class(call: Call) -> Response:
    """``GET /os-quota-class-sets/{id}`` (administrators): the class's limits; the
    ``default`` class's are every project's defaults."""
    name = str(call.request.path_params["quota_class"])
    _class_policy(call, "show")
    limits = await call.run(call.engine.quota_class, name)
    return JSONBody({"quota_class_set": {"id": name, **{
        resource: limits[resource] for resource in _class_resources(call)}}})


def _update_class(call: Call, name: str, body: Any) -> dict[str, Any]:
    values = _body(body, "quota_class_set")
    checked = quotas.check_limits(values, _class_resources(call))
    limits = call.engine.set_quota_class(name, checked, ctx=call.context())
    return {"quota_class_set": {resource: limits[resource]
                                for resource in _class_resources(call)}}


async def update_quota_class(call: Call) -> Response:
    """``PUT /os-quota-class-sets/{id}`` (administrators): ``{"quota_class_set":
    {resource: integer ≥ -1}}``; answers the class's limits (without its id, as Nova)."""
    name = str(call.request.path_params["quota_class"])
    _class_policy(call, "update")
    body = await read_json(call.request)
    return JSONBody(await call.run(_update_class, call, name, {} if body is EMPTY else body))


__all__ = ["delete_quotas", "show_default_quotas", "show_quota_class", "show_quota_details",
           "show_quotas", "update_quota_class", "update_quotas"]
