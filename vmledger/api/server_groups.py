"""``/os-server-groups``: placement groups of servers (see
:mod:`vmledger.domain.server_group`).

As ``nova/api/openstack/compute/server_groups.py``:

- create (200): ``{"server_group": {"name", "policies": [one policy]}}`` before 2.64
  (``affinity``, ``anti-affinity``; the ``soft-`` ones from 2.15), ``{"name", "policy",
  "rules"?}`` from 2.64 (``rules``: ``max_server_per_host``, anti-affinity only); beyond
  the project's ``server_groups`` quota → 403;
- the view: ``id``, ``name``, ``members`` (server ids), ``policies`` and ``metadata``
  (``{}``) before 2.64, ``policy`` and ``rules`` from 2.64, ``project_id`` and
  ``user_id`` from 2.13;
- list: the caller's project's groups (``all_projects`` for administrators), ``offset``
  and ``limit``; from 2.75 other parameters → 400; show (another project's → 404) and
  delete (204; the members stay, without a group).

A server joins a group when created with the scheduler hint ``group``
(``os:scheduler_hints``).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.responses import Response

from vmledger.api import query as q
from vmledger.api.catalog import MAX_LIMIT
from vmledger.api.faults import ApiError
from vmledger.api.http import EMPTY, Call, read_json
from vmledger.api.rendering import JSONBody
from vmledger.api.validation import (
    invalid_field,
    no_other_keys,
    non_negative_int,
    require_keys,
    require_object,
)
from vmledger.domain import server_group as groups


def group_view(group: dict[str, Any], call: Call) -> dict[str, Any]:
    view: dict[str, Any] = {"id": group["id"], "name": group["name"],
                            "members": list(group.get("members") or [])}
    if call.at_least(2, 64):
        view["policy"] = group["policy"]
        view["rules"] = dict(group.get("rules") or {})
    else:
        view["policies"] = [group["policy"]]
        view["metadata"] = {}
    if call.at_least(2, 13):
        view["project_id"] = group["owner_project_id"]
        view["user_id"] = group["owner_user_id"]
    return view


def _parse(call: Call, body: Any) -> tuple[Any, Any, Any]:
    body = require_object({} if body is EMPTY else body, None)
    require_keys(body, "server_group", ["server_group"])
    no_other_keys(body, "server_group", ["server_group"])
    group = require_object(body["server_group"], "server_group")
    if call.at_least(2, 64):
        require_keys(group, "server_group", ["name", "policy"])
        no_other_keys(group, "server_group", ["name", "policy", "rules"])
        return group["name"], group["policy"], group.get("rules")
    require_keys(group, "server_group", ["name", "policies"])
    no_other_keys(group, "server_group", ["name", "policies"])
    policies = group["policies"]
    allowed = groups.POLICIES if call.at_least(2, 15) else (groups.AFFINITY,
                                                           groups.ANTI_AFFINITY)
    if not isinstance(policies, list) or len(policies) != 1 or policies[0] not in allowed:
        raise invalid_field("policies", policies, f"one policy of {list(allowed)} is required")
    return group["name"], policies[0], None


async def create_server_group(call: Call) -> Response:
    name, policy, rules = _parse(call, await read_json(call.request))
    group = await call.run(call.engine.create_server_group, name, policy, rules,
                           ctx=call.context())
    return JSONBody({"server_group": group_view(group, call)})


def _list(call: Call) -> list[dict[str, Any]]:
    query = call.request.query_params
    if call.at_least(2, 75):
        q.reject_unknown(query, ("all_projects", "limit", "offset"))
    offset = non_negative_int(q.last(query, "offset") or "0", "offset")
    raw = q.last(query, "limit")
    limit = MAX_LIMIT if raw is None else min(non_negative_int(raw, "limit"), MAX_LIMIT)
    everyone = "all_projects" in query and q.bool_lenient(query["all_projects"] or "true")
    found = call.engine.server_groups(ctx=call.context(), all_projects=everyone)
    return [group_view(g, call) for g in found[offset:offset + limit]]


async def list_server_groups(call: Call) -> Response:
    return JSONBody({"server_groups": await call.run(_list, call)})


async def show_server_group(call: Call) -> Response:
    group = await call.run(call.engine.server_group, call.request.path_params["group_id"],
                           ctx=call.context())
    return JSONBody({"server_group": group_view(group, call)})


async def delete_server_group(call: Call) -> Response:
    await call.run(call.engine.delete_server_group, call.request.path_params["group_id"],
                   ctx=call.context())
    return Response(status_code=204)


def scheduler_group(body: dict[str, Any]) -> str | None:
    """The ``group`` scheduler hint of a create body (a UUID, else 400)."""
    hints = body.get("os:scheduler_hints", body.get("OS-SCH-HNT:scheduler_hints"))
    if hints is None:
        return None
    hints = require_object(hints, "os:scheduler_hints")
    group = hints.get("group")
    if group is None:
        return None
    bad = ApiError(400, f"Invalid input for field/attribute group. Value: {group}. "
                        f"{group!r} is not a 'uuid'")
    if not isinstance(group, str):
        raise bad
    try:
        return str(uuid.UUID(group))
    except ValueError:
        raise bad from None


__all__ = ["create_server_group", "delete_server_group", "group_view", "list_server_groups",
           "scheduler_group", "show_server_group"]
