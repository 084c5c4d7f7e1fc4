"""The compute-services read model: one row per host whose service an administrator
changed (disabled, enabled, forced down), folded in the servers view's transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmledger.domain.compute_service import ComputeService
from vmledger.projections.aggregates import AggregateRows
from vmledger.projections.store import ReadStore, dumps, loads, time_text

TABLE = "vmledger_compute_services"
_COLUMNS = ("id", "host", "updated_at", "doc")


class ComputeServices(AggregateRows):
    """Keeps ``vmledger_compute_services`` up to date."""

    table = TABLE
    columns = _COLUMNS
    event_types = (ComputeService.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, host TEXT,"
                    " updated_at TEXT, doc TEXT)")]

    def row(self, d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["id"], d["host"], time_text(d["updated_at"]), dumps(d))


def service_states(store: ReadStore) -> dict[str, dict[str, Any]]:
    """By host: ``disabled``, ``disabled_reason``, ``forced_down``, ``updated_at``."""
    return {r["host"]: loads(r["doc"]) for r in store.query(f"SELECT host, doc FROM {TABLE}")}
