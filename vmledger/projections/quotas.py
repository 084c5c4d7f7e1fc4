"""The quota-sets read model: one row per project whose limits an administrator changed,
folded with the quota events' own ``apply`` methods in the servers view's transaction
(a :class:`~vmledger.projections.servers.ViewExtension`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmledger.domain.quota import DEFAULT_CLASS, DEFAULTS, QuotaClass, QuotaSet
from vmledger.projections.aggregates import AggregateRows
from vmledger.projections.store import ReadStore, dumps, loads, time_text

TABLE = "vmledger_quota_sets"
_COLUMNS = ("project_id", "id", "updated_at", "doc")


class QuotaSets(AggregateRows):
    """Keeps ``vmledger_quota_sets`` up to date."""

    table = TABLE
    columns = _COLUMNS
    key = "project_id"
    event_types = (QuotaSet.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (project_id TEXT PRIMARY KEY,"
                    " id TEXT, updated_at TEXT, doc TEXT)")]

    def row(self, d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["quota_project_id"], d["id"], time_text(d["updated_at"]), dumps(d))


def project_limits(store: ReadStore, project_id: str) -> dict[str, int]:
    """The limits an administrator set for the project (the others are the defaults)."""
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE project_id = ?", [project_id])
    return dict(loads(rows[0]["doc"]).get("limits") or {}) if rows else {}


CLASS_TABLE = "vmledger_quota_classes"


class QuotaClasses(AggregateRows):
    """Keeps ``vmledger_quota_classes`` up to date: one row per quota class an
    administrator changed."""

    table = CLASS_TABLE
    columns = ("name", "id", "updated_at", "doc")
    key = "name"
    event_types = (QuotaClass.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [sql(f"CREATE TABLE IF NOT EXISTS {CLASS_TABLE} (name TEXT PRIMARY KEY,"
                    " id TEXT, updated_at TEXT, doc TEXT)")]

    def row(self, d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["quota_class"], d["id"], time_text(d["updated_at"]), dumps(d))


def class_limits(store: ReadStore, name: str = DEFAULT_CLASS) -> dict[str, int]:
    """Every limit of a quota class: what an administrator set over the built-in
    defaults (the ``default`` class's are every project's defaults)."""
    rows = store.query(f"SELECT doc FROM {CLASS_TABLE} WHERE name = ?", [name])
    return {**DEFAULTS, **(dict(loads(rows[0]["doc"]).get("limits") or {}) if rows else {})}
