"""Counts the metrics read from the read models at scrape time, each one query."""

from __future__ import annotations

from vmledger.domain.status import status_of
from vmledger.projections.servers import ServersView


def servers_by_status(view: ServersView) -> dict[str, int]:
    """How many servers (not deleted) show each API status, counted by the database
    per (vm_state, task_state) pair and mapped as Nova's ``status_from_state``."""
    counts: dict[str, int] = {}
    for row in view.query(f"SELECT vm_state, task_state, COUNT(*) AS n FROM {view.table}"
                          " WHERE deleted = 0 GROUP BY vm_state, task_state"):
        status = status_of(row["vm_state"], row["task_state"])
        counts[status] = counts.get(status, 0) + int(row["n"])
    return counts
