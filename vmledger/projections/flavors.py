"""The flavors read model: the flavors administrators made or changed (one row per
flavor record, folded with the record events' own ``apply`` methods in the servers
view's transaction); they override the catalog's configured flavors by id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmledger.domain.catalog import Flavor
from vmledger.domain.flavors import FlavorRecord
from vmledger.projections.aggregates import AggregateRows
from vmledger.projections.store import ReadStore, dumps, loads

TABLE = "vmledger_flavors"
_COLUMNS = ("id", "flavor_id", "name", "deleted", "doc")
_FIELDS = frozenset(Flavor.__dataclass_fields__)


class FlavorRecords(AggregateRows):
    """Keeps ``vmledger_flavors`` up to date."""

    table = TABLE
    columns = _COLUMNS
    event_types = (FlavorRecord.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY,"
                    " flavor_id TEXT, name TEXT, deleted INTEGER, doc TEXT)")]

    def row(self, d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["id"], d["flavor"]["id"], d["flavor"]["name"],
                1 if d.get("deleted") else 0, dumps(d))


def flavor_overrides(store: ReadStore) -> dict[str, Flavor | None]:
    """Flavors by id as administrators left them (None: deleted)."""
    out: dict[str, Flavor | None] = {}
    for r in store.query(f"SELECT flavor_id, deleted, doc FROM {TABLE}"):
        if r["deleted"]:
            out[r["flavor_id"]] = None
            continue
        fields = loads(r["doc"])["flavor"]
        out[r["flavor_id"]] = Flavor(**{k: v for k, v in fields.items() if k in _FIELDS})
    return out


def flavor_access(store: ReadStore) -> dict[str, list[str]]:
    """The projects given access to each private flavor, by flavor id."""
    return {r["flavor_id"]: list(loads(r["doc"]).get("access") or [])
            for r in store.query(f"SELECT flavor_id, doc FROM {TABLE} WHERE deleted = 0")}
