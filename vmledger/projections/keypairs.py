"""The key-pairs read model: one row per (user, name), folded with the key-pair events'
own ``apply`` methods in the servers view's transaction (a
:class:`~vmledger.projections.servers.ViewExtension`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmledger.domain.keypair import Keypair
from vmledger.projections.aggregates import AggregateRows
from vmledger.projections.store import ReadStore, dumps, loads, time_text

TABLE = "vmledger_keypairs"
_COLUMNS = ("user_id", "name", "id", "key_type", "created_at", "updated_at", "deleted", "doc")


class Keypairs(AggregateRows):
    """Keeps ``vmledger_keypairs`` up to date."""

    table = TABLE
    columns = _COLUMNS
    key = ("user_id", "name")
    event_types = (Keypair.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (user_id TEXT NOT NULL, name TEXT NOT NULL,"
                " id TEXT, key_type TEXT, created_at TEXT, updated_at TEXT, deleted INTEGER,"
                " doc TEXT, PRIMARY KEY (user_id, name))"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_id ON {TABLE} (id)"),
        ]

    def fold(self, doc: dict[str, Any] | None, event: Any) -> dict[str, Any]:
        result = super().fold(doc, event)
        if isinstance(event, Keypair.Imported | Keypair.Reimported):
            result["created_at"] = event.timestamp  # a name imported again is a new key
            result["deleted_at"] = None
        elif isinstance(event, Keypair.Deleted):
            result["deleted_at"] = event.timestamp
        return result

    def row(self, d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["owner_user_id"], d["name"], d["id"], d["key_type"], time_text(d["created_at"]),
                time_text(d["updated_at"]), 1 if d.get("deleted") else 0, dumps(d))


def list_keypairs(store: ReadStore, user_id: str) -> list[dict[str, Any]]:
    """A user's key pairs (not deleted), by name."""
    return [loads(r["doc"]) for r in store.query(
        f"SELECT doc FROM {TABLE} WHERE user_id = ? AND deleted = 0 ORDER BY name",
        [user_id])]


def get_keypair(store: ReadStore, user_id: str, name: str) -> dict[str, Any] | None:
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE user_id = ? AND name = ? "
                       "AND deleted = 0", [user_id, name])
    return loads(rows[0]["doc"]) if rows else None
