"""``GET /os-migrations`` and ``/servers/{id}/migrations``: Nova's migration records.

Every resize, cold migration, live migration and evacuation is a migration record
(``migration_type`` ``resize``, ``migration``, ``live-migration``, ``evacuation``), kept
by the migrations read model. As ``nova/api/openstack/compute/migrations.py``
(administrators only):

- fields: ``id``, ``status``, ``instance_uuid``, ``source_compute``/``source_node``,
  ``dest_compute``/``dest_node``, ``dest_host`` (null: hosts have no recorded address),
  ``old_instance_type_id``/``new_instance_type_id``, ``created_at``, ``updated_at``;
  ``migration_type`` from 2.23, ``uuid`` from 2.59, ``user_id`` and ``project_id`` (who
  asked for the move) from 2.80.
- filters: ``status``, ``host`` (source or destination), ``source_compute``,
  ``instance_uuid``, ``migration_type``, ``hidden`` (no record is hidden); before 2.59
  any other parameter is ignored, oldest first.
- from 2.59: newest first (``created_at``, then ``id``), ``limit`` (≤ 1000), ``marker``
  (a record's ``uuid``; unknown → 400), ``changes-since`` (on ``updated_at``),
  ``migrations_links``; any other parameter → 400. ``changes-before`` from 2.66,
  ``user_id`` and ``project_id`` from 2.80.

From 2.23 a live migration in progress carries ``links`` to its record under its
server.

A server's live migrations in progress, as ``nova/api/openstack/compute/
server_migrations.py`` (administrators only; before its microversion a route is 404):

- ``GET /servers/{id}/migrations`` (2.23): the server's live migrations ``queued``,
  ``preparing``, ``running`` or ``post-migrating``; ``GET .../migrations/{mid}`` (2.23)
  one of them (another record, one not live or one not in progress: 404 with Nova's
  message). Fields: ``id``, ``server_uuid``, ``status``, the hosts and nodes,
  ``dest_host``, ``created_at``, ``updated_at``, the memory and disk progress
  (``memory_total_bytes``… null: the hypervisors report none), ``uuid`` from 2.59,
  ``user_id`` and ``project_id`` from 2.80.
- ``DELETE .../migrations/{mid}`` (2.24): abort it — 202; a running one, and from 2.65 a
  queued or preparing one too (another state: 400); the server not migrating: 409; no
  such record of the server: 404.
- ``POST .../migrations/{mid}/action`` with ``{"force_complete": null}`` (2.22):
  finish a running live migration of an ACTIVE server now — 202; no such record or
  another state: 400 (as Nova); the server not migrating or not ACTIVE: 409.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api import query as q
from vmledger.api.catalog import MAX_LIMIT, next_link
from vmledger.api.faults import MALFORMED_BODY, ApiError
from vmledger.api.http import EMPTY, Call, read_json
from vmledger.api.rendering import JSONBody
from vmledger.api.servers import owned_server
from vmledger.api.validation import invalid_field, non_negative_int
from vmledger.engine.operations import LIVE_IN_PROGRESS
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
        if row["migration_type"] == "live-migration" and row["status"] in LIVE_IN_PROGRESS:
            view["links"] = call.viewer.links.pair(
                f"servers/{row['server_id']}/migrations", str(row["id"]))
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


def server_migration_view(row: dict[str, Any], call: Call) -> dict[str, Any]:
    """A live migration in progress as ``/servers/{id}/migrations`` shows it."""
    view: dict[str, Any] = {
        "created_at": row["created_at"],
        "dest_compute": row["dest_compute"],
        "dest_host": row["dest_host"],
        "dest_node": row["dest_node"],
        # the progress of the copy: no hypervisor of vmledger reports it
        "disk_processed_bytes": None,
        "disk_remaining_bytes": None,
        "disk_total_bytes": None,
        "id": row["id"],
        "memory_processed_bytes": None,
        "memory_remaining_bytes": None,
        "memory_total_bytes": None,
        "server_uuid": row["server_id"],
        "source_compute": row["source_compute"],
        "source_node": row["source_node"],
        "status": row["status"],
        "updated_at": row["updated_at"],
    }
    if call.at_least(2, 59):
        view["uuid"] = row["uuid"]
    if call.at_least(2, 80):
        view["user_id"] = row["user_id"]
        view["project_id"] = row["project_id"]
    return view


def _server(call: Call, rule: str, since: tuple[int, int] = (2, 23)) -> str:
    """The server of the path, once the microversion has the route and the policy
    allows the caller (Nova's order: the route, the policy, then the server)."""
    if not call.at_least(*since):
        raise ApiError(404, "The resource could not be found.")
    _admin(call, rule)
    return str(call.request.path_params["server_id"])


def _migration_id(call: Call) -> str:
    return str(call.request.path_params["migration_id"])


def _list_live(call: Call, server_id: str) -> list[dict[str, Any]]:
    owned_server(call.engine, call.principal, server_id)
    return call.engine.live_migrations(server_id)


async def list_server_migrations(call: Call) -> Response:
    server_id = _server(call, "os_compute_api:servers:migrations:index")
    rows = await call.run(_list_live, call, server_id)
    return JSONBody({"migrations": [server_migration_view(r, call) for r in rows]})


def _show(call: Call, server_id: str, migration_id: str) -> dict[str, Any]:
    owned_server(call.engine, call.principal, server_id)
    for row in call.engine.live_migrations(server_id):
        if str(row["id"]) == migration_id:
            return row
    found = [r for r in call.engine.migrations(server_id=server_id)
             if str(r["id"]) == migration_id]
    if not found:
        raise ApiError(404, f"In-progress live migration {migration_id} is not found for"
                            f" server {server_id}.")
    if found[0]["migration_type"] != "live-migration":
        raise ApiError(404, f"Migration {migration_id} for server {server_id} is not "
                            "live-migration.")
    raise ApiError(404, f"Live migration {migration_id} for server {server_id} is not in"
                        " progress.")


async def show_server_migration(call: Call) -> Response:
    server_id = _server(call, "os_compute_api:servers:migrations:show")
    row = await call.run(_show, call, server_id, _migration_id(call))
    return JSONBody({"migration": server_migration_view(row, call)})


def _abort(call: Call, server_id: str, migration_id: str) -> None:
    call.engine.abort_migration(server_id, migration_id, queued=call.at_least(2, 65),
                                ctx=call.context())


async def abort_server_migration(call: Call) -> Response:
    """``DELETE /servers/{id}/migrations/{mid}`` (2.24): abort a live migration."""
    server_id = _server(call, "os_compute_api:servers:migrations:delete", (2, 24))
    await call.run(_abort, call, server_id, _migration_id(call))
    return Response(status_code=202)


def _force_complete(call: Call, server_id: str, migration_id: str) -> None:
    call.engine.force_complete_migration(server_id, migration_id, ctx=call.context())


async def server_migration_action(call: Call) -> Response:
    """``POST /servers/{id}/migrations/{mid}/action``: ``{"force_complete": null}``
    (2.22), the one action on a migration."""
    body = await read_json(call.request)
    if body is EMPTY or not isinstance(body, dict) or len(body) != 1:
        raise ApiError(400, MALFORMED_BODY)
    key, value = next(iter(body.items()))
    if key != "force_complete":
        raise ApiError(400, f"There is no such action: {key}")
    server_id = _server(call, "os_compute_api:servers:migrations:force_complete", (2, 22))
    if value is not None:
        raise invalid_field("force_complete", value, f"{value!r} is not of type 'null'")
    await call.run(_force_complete, call, server_id, _migration_id(call))
    return Response(status_code=202)


__all__ = ["abort_server_migration", "list_migrations", "list_server_migrations",
           "migration_view", "server_migration_action", "server_migration_view",
           "show_server_migration"]
