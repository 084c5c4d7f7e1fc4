"""The custom-images read model: one row per image made from a server.

Folded with the image events' own ``apply`` methods, in the servers view's transaction
(a :class:`~vmledger.projections.servers.ViewExtension`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmledger.domain.image import DELETED, CustomImage
from vmledger.projections.aggregates import AggregateRows
from vmledger.projections.store import ReadStore, dumps, loads, time_text

TABLE = "vmledger_images"
_COLUMNS = ("id", "project_id", "server_id", "name", "status", "created_at", "updated_at",
            "deleted", "doc")


class Images(AggregateRows):
    """Keeps ``vmledger_images`` up to date."""

    table = TABLE
    columns = _COLUMNS
    event_types = (CustomImage.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, project_id TEXT,"
                " server_id TEXT, name TEXT, status TEXT, created_at TEXT, updated_at TEXT,"
                " deleted INTEGER, doc TEXT)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_project ON {TABLE} (project_id, name)"),
        ]

    def row(self, d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["id"], d.get("project_id"), d.get("server_id"), d.get("name"),
                d.get("status"), time_text(d["created_at"]), time_text(d["updated_at"]),
                1 if d.get("status") == DELETED else 0, dumps(d))


def list_images(store: ReadStore, project_id: str | None) -> list[dict[str, Any]]:
    """Custom images (not deleted): one project's, or every project's when None."""
    sql = f"SELECT doc FROM {TABLE} WHERE deleted = 0"
    params: list[Any] = []
    if project_id is not None:
        sql += " AND project_id = ?"
        params.append(project_id)
    return [loads(r["doc"]) for r in store.query(sql + " ORDER BY created_at, id", params)]


def get_image(store: ReadStore, image_id: str) -> dict[str, Any] | None:
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE id = ?", [image_id])
    return loads(rows[0]["doc"]) if rows else None
