"""Host reports: what each host's agent last said of its hypervisor, and when.

Several hosts share one database: each runs a host agent (``vmledger serve`` for its own
``--host-name``, or ``vmledger agent --host NAME``), and every API process schedules new
servers over all of them. What the scheduler needs of the other hosts — that they are
alive, and how much memory they have — comes from here: an agent writes its host's row
(the hypervisor's ``host_info()`` and the time) when it starts and then every
:data:`REPORT_INTERVAL`; a host whose last report is older than
:data:`SERVICE_DOWN_TIME` is down, as Nova judges a compute service by its heartbeats.

This table is not a read model of the log, and reports are not events: a heartbeat every
few seconds would drown the audit trail, and what a host is worth at a moment says
nothing about who asked for what. It lives beside the read models in their database and
a rebuild leaves it alone (Nova keeps its service heartbeats and compute nodes the same
way, as plain rows).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from vmledger.projections.store import ReadStore, dumps, loads

TABLE = "vmledger_host_reports"
#: how often a running agent reports its host (Nova's ``report_interval``: 10 s)
REPORT_INTERVAL = timedelta(seconds=10)
#: a host not heard from for longer is down (Nova's ``service_down_time``: 60 s)
SERVICE_DOWN_TIME = timedelta(seconds=60)


def create_table(store: ReadStore) -> None:
    with store.transaction() as curs:
        curs.execute(store.sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (host TEXT PRIMARY KEY,"
                               " reported_at TEXT, doc TEXT)"))


def save_report(store: ReadStore, host: str, info: dict[str, Any], at: datetime) -> None:
    """Record what ``host``'s hypervisor reported at ``at`` (replacing its last report)."""
    doc = {"host": host, "info": info, "reported_at": at}
    with store.transaction() as curs:
        store.writer(curs).upsert(
            TABLE, ("host", "reported_at", "doc"), "host",
            [(host, at.isoformat(), dumps(doc))])


def delete_report(store: ReadStore, host: str) -> None:
    """Forget ``host``'s last report (its service was deleted)."""
    with store.transaction() as curs:
        curs.execute(store.sql(f"DELETE FROM {TABLE} WHERE host = ?"), [host])


def host_reports(store: ReadStore) -> dict[str, dict[str, Any]]:
    """By host: ``info`` (what its hypervisor reported) and ``reported_at``."""
    return {r["host"]: loads(r["doc"]) for r in store.query(f"SELECT host, doc FROM {TABLE}")}


def is_up(report: dict[str, Any] | None, now: datetime,
          down_time: timedelta = SERVICE_DOWN_TIME) -> bool:
    """Whether a host with this last report counts as alive at ``now``."""
    return report is not None and now - report["reported_at"] <= down_time


__all__ = ["REPORT_INTERVAL", "SERVICE_DOWN_TIME", "TABLE", "create_table", "delete_report",
           "host_reports", "is_up", "save_report"]
