"""``GET /os-migrations`` and ``/servers/{id}/migrations``: Nova's migration records.

Every resize is a migration record (``migration_type`` ``resize``, from the server's
host to itself), kept by the migrations read model. As
``nova/api/openstack/compute/migrations.py`` (administrators only):

- fields: ``id``, ``status``, ``instance_uuid``, ``source_compute``/``source_node``,
  ``dest_compute``/``dest_node``, ``dest_host`` (null: hosts have no recorded address),
  ``old_instance_type_id``/``new_instance_type_id``, ``created_at``, ``updated_at``;
  ``migration_type`` from 2.23, ``uuid`` from 2.59, ``user_id`` and ``project_id`` (who
  asked for the resize) from 2.80.
- filters: ``status``, ``host`` (source or destination), ``source_compute``,
  ``instance_uuid``, ``migration_type``, ``hidden`` (no record is hidden); before 2.59
  any other parameter is ignored, oldest first.
- from 2.59: newest first (``created_at``, then ``id``), ``limit`` (≤ 1000), ``marker``
  (a record's ``uuid``; unknown → 400), ``changes-since`` (on ``updated_at``),
  ``migrations_links``; any other parameter → 400. ``changes-before`` from 2.66,
  ``user_id`` and ``project_id`` from 2.80.

``/servers/{id}/migrations`` (2.23) lists a server's live migrations in progress:
vmledger does not live-migrate, so the list is empty and a record is never one.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api import query as q
from vmledger.api.catalog import MAX_LIMIT, next_link
from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.api.servers import owned_server
from vmledger.api.validation import non_negative_int
from vmledger.projections.migrations import MarkerNotFound

#: the filters of Nova's query schema at every microversion (repeatable: the last counts)
_FILTERS = ("hidden", "host", "instance_uuid", "source_compute", "status", "migration_type")
_QUERY_V259 = (*_FILTERS, "limit", "marker", "changes-since")
_QUERY_V266 = (*_QUERY_V259, "changes-before")
_QUERY_V280 = (*_QUERY_V266, "user_id", "project_id")


def _admin(call: Call, rule: str) -> None:
    if not call.principal.is_admin:
        raise ApiError(403, f"Policy doesn't allow {rule} to be performed.")


def migration_view(row: dict[str, Any], call: Call) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row["id"],
        "status": row["status"],
        "instance_uuid": row["server_id"],
        "source_node": row["source_node"],
        "source_compute": row["source_compute"],
        "dest_node": row["dest_node"],
        "dest_compute": row["dest_compute"],
        "dest_host": row["dest_host"],
        "old_instance_type_id": row["old_flavor_id"],
        "new_instance_type_id": row["new_flavor_id"],
        # stored as fixed-width UTC text: Nova's form (microseconds, no zone designator)
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if call.at_least(2, 23):
        view["migration_type"] = row["migration_type"]
    if call.at_least(2, 59):
        view["uuid"] = row["uuid"]
    if call.at_least(2, 80):
        view["user_id"] = row["user_id"]
        view["project_id"] = row["project_id"]
    return view


def _filters(call: Call) -> tuple[dict[str, str], str | None, bool]:
    """Column filters, the host filter, and whether ``hidden`` asks for hidden records."""
    query = call.request.query_params
    equal: dict[str, str] = {}
    for name, column in (("status", "status"), ("instance_uuid", "server_id"),
                         ("source_compute", "source_compute"),
                         ("migration_type", "migration_type")):
        value = q.last(query, name)
        if value is not None:
            equal[column] = value
    host = q.last(query, "host")
    if host is not None:
        equal.pop("source_compute", None)  # Nova: host, else source_compute
    if call.at_least(2, 80):
        for name in ("user_id", "project_id"):
            value = q.single(query, name)
            if value is not None:
                equal[name] = value
    hidden = q.last(query, "hidden")
    return equal, host, hidden is not None and q.bool_lenient(hidden)


def _list(call: Call) -> dict[str, Any]:
    query = call.request.query_params
    paged = call.at_least(2, 59)
    if paged:
        q.reject_unknown(query, _QUERY_V280 if call.at_least(2, 80)
                         else _QUERY_V266 if call.at_least(2, 66) else _QUERY_V259)
    equal, host, hidden = _filters(call)
    if not paged:
        rows = [] if hidden else call.engine.migrations(host=host, where=equal)
        return {"migrations": [migration_view(r, call) for r in rows]}
    limit = MAX_LIMIT
    raw_limit = q.single(query, "limit")
    if raw_limit is not None:
        limit = min(non_negative_int(raw_limit, "limit"), MAX_LIMIT)
    since, before = q.time_window(query, before_allowed=call.at_least(2, 66), multi=False)
    marker = q.single(query, "marker")
    try:
        rows = call.engine.migrations(host=host, since=since, before=before,
                                      newest_first=True, limit=limit, marker=marker,
                                      where=equal)
    except MarkerNotFound:
        raise ApiError(400, f"Marker {marker} could not be found.") from None
    if hidden:
        rows = []
    body: dict[str, Any] = {"migrations": [migration_view(r, call) for r in rows]}
    if rows:
        links = next_link(call, "os-migrations", rows, limit, rows[-1]["uuid"])
        if links:
            body["migrations_links"] = links
    return body


async def list_migrations(call: Call) -> Response:
    _admin(call, "os_compute_api:os-migrations:index")
    return JSONBody(await call.run(_list, call))


def _server(call: Call, rule: str) -> str:
    if not call.at_least(2, 23):
        raise ApiError(404, "The resource could not be found.")
    _admin(call, rule)
    return str(call.request.path_params["server_id"])


async def list_server_migrations(call: Call) -> Response:
    server_id = _server(call, "os_compute_api:servers:migrations:index")
    await call.run(owned_server, call.engine, call.principal, server_id)
    return JSONBody({"migrations": []})  # no live migration is ever in progress


def _show(call: Call, server_id: str, migration_id: str) -> None:
    owned_server(call.engine, call.principal, server_id)
    if not any(str(r["id"]) == migration_id
               for r in call.engine.migrations(server_id=server_id)):
        raise ApiError(404, f"Migration {migration_id} not found for instance {server_id}")
    raise ApiError(404, f"Migration {migration_id} for server {server_id} is not "
                        "live-migration.")


async def show_server_migration(call: Call) -> Response:
    server_id = _server(call, "os_compute_api:servers:migrations:show")
    await call.run(_show, call, server_id, str(call.request.path_params["migration_id"]))
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["list_migrations", "list_server_migrations", "migration_view",
           "show_server_migration"]
