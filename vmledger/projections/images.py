"""The custom-images read model: one row per image made from a server.

Folded with the image events' own ``apply`` methods, in the servers view's transaction
(a :class:`~vmledger.projections.servers.ViewExtension`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from vmledger.domain.image import DELETED, CustomImage
from vmledger.projections.servers import RowWriter, _ts, dumps, loads

TABLE = "vmledger_images"
_COLUMNS = ("id", "project_id", "server_id", "name", "status", "created_at", "updated_at",
            "deleted", "doc")


def fold_image(doc: dict[str, Any] | None, event: CustomImage.Event) -> dict[str, Any]:
    target = SimpleNamespace(**(doc or {}))
    event.apply(target)
    result = vars(target)
    result["id"] = str(event.originator_id)
    result["version"] = event.originator_version
    result.setdefault("created_at", event.timestamp)
    result["updated_at"] = event.timestamp
    return result


class Images:
    """Keeps ``vmledger_images`` up to date."""

    #: the events this read model folds (the others need not be decoded for it)
    event_types: tuple[type, ...] = (CustomImage.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, project_id TEXT,"
                " server_id TEXT, name TEXT, status TEXT, created_at TEXT, updated_at TEXT,"
                " deleted INTEGER, doc TEXT)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_project ON {TABLE} (project_id, name)"),
        ]

    def batch(self, writer: RowWriter, *, empty: bool) -> ImagesBatch:
        return ImagesBatch(writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))


class ImagesBatch:
    """One transaction's fold of the images: each image's row loaded and written once."""

    def __init__(self, writer: RowWriter, *, empty: bool) -> None:
        self.writer = writer
        self.curs = writer.curs
        self.sql = writer.sql
        self.empty = empty
        self.docs: dict[str, dict[str, Any] | None] = {}
        self.changed: list[str] = []

    def fold(self, events: Sequence[Any]) -> None:
        image_event = CustomImage.Event
        page = [e for e in events if isinstance(e, image_event)]
        if not page:
            return
        docs = self.docs
        unknown = [i for i in dict.fromkeys(str(e.originator_id) for e in page)
                   if i not in docs]
        for image_id in unknown:
            docs[image_id] = None
        if unknown and not self.empty:
            for i in range(0, len(unknown), 500):
                chunk = unknown[i:i + 500]
                marks = ",".join("?" for _ in chunk)
                self.curs.execute(self.sql(f"SELECT id, doc FROM {TABLE} WHERE id IN ({marks})"),
                                  chunk)
                docs.update((row["id"], loads(row["doc"])) for row in self.curs.fetchall())
        for event in page:
            key = str(event.originator_id)
            current = docs[key]
            if current is not None and current["version"] >= event.originator_version:
                continue
            docs[key] = fold_image(current, event)
            self.changed.append(key)

    def write(self) -> None:
        rows = []
        for key in dict.fromkeys(self.changed):
            d = self.docs[key]
            assert d is not None
            rows.append((d["id"], d.get("project_id"), d.get("server_id"), d.get("name"),
                         d.get("status"), _ts(d["created_at"]), _ts(d["updated_at"]),
                         1 if d.get("status") == DELETED else 0, dumps(d)))
        self.writer.upsert(TABLE, _COLUMNS, "id", rows)


def list_images(view: Any, project_id: str | None) -> list[dict[str, Any]]:
    """Custom images (not deleted): one project's, or every project's when None."""
    sql = f"SELECT doc FROM {TABLE} WHERE deleted = 0"
    params: list[Any] = []
    if project_id is not None:
        sql += " AND project_id = ?"
        params.append(project_id)
    return [loads(r["doc"]) for r in view._query(sql + " ORDER BY created_at, id", params)]


def get_image(view: Any, image_id: str) -> dict[str, Any] | None:
    rows = view._query(f"SELECT doc FROM {TABLE} WHERE id = ?", [image_id])
    return loads(rows[0]["doc"]) if rows else None
