"""The server-groups read model: one row per group, folded with the group events' own
``apply`` methods in the servers view's transaction (a
:class:`~vmledger.projections.servers.ViewExtension`). A group's members are the servers
of its project, not deleted, whose documents name it (``attributes.server_group``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmledger.domain.server_group import ServerGroup
from vmledger.projections.aggregates import AggregateRows
from vmledger.projections.server_queries import TABLE as SERVERS_TABLE
from vmledger.projections.store import ReadStore, dumps, loads, time_text

TABLE = "vmledger_server_groups"
_COLUMNS = ("id", "project_id", "name", "created_at", "deleted", "doc")


class ServerGroups(AggregateRows):
    """Keeps ``vmledger_server_groups`` up to date."""

    table = TABLE
    columns = _COLUMNS
    event_types = (ServerGroup.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, project_id TEXT,"
                " name TEXT, created_at TEXT, deleted INTEGER, doc TEXT)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_project ON {TABLE}"
                " (project_id, deleted, created_at)"),
        ]

    def row(self, d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["id"], d["owner_project_id"], d["name"], time_text(d["created_at"]),
                1 if d.get("deleted") else 0, dumps(d))


def get_group(store: ReadStore, group_id: str) -> dict[str, Any] | None:
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE id = ? AND deleted = 0", [group_id])
    return loads(rows[0]["doc"]) if rows else None


def list_groups(store: ReadStore, project_id: str | None) -> list[dict[str, Any]]:
    """Live groups, oldest first (of one project, or of all)."""
    where, params = "deleted = 0", []
    if project_id is not None:
        where += " AND project_id = ?"
        params.append(project_id)
    return [loads(r["doc"]) for r in store.query(
        f"SELECT doc FROM {TABLE} WHERE {where} ORDER BY created_at, id", params)]


def member_docs(store: ReadStore, project_id: str, group_id: str) -> list[dict[str, Any]]:
    """The documents of the group's members (its project's servers, not deleted)."""
    if store.dialect == "postgres":
        named = "((doc::jsonb)->'attributes'->>'server_group')"
    else:
        named = "json_extract(doc, '$.attributes.server_group')"
    return [loads(r["doc"]) for r in store.query(
        f"SELECT doc FROM {SERVERS_TABLE} WHERE project_id = ? AND deleted = 0 AND "
        f"{named} = ? ORDER BY created_at, id", [project_id, group_id])]
