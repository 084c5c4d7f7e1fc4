"""The allocations read model: what each server holds of its host (Nova's placement
allocations), from the folded server documents.

One row per server that holds resources on a host: its flavor's vCPUs, RAM (MB) and
disk (GB; see :func:`vmledger.domain.catalog.flavor_resources`). A
server being resized holds both flavors, from the request until it is confirmed or
reverted (Nova holds the old flavor for the migration and the new one for the server,
on the same host). A server holds nothing once deleted, while shelved and offloaded, or
when no host could take it. The scheduler sums the rows by host (:func:`host_usage`)
to know which hosts still have room (see :meth:`vmledger.engine.Engine.host_room`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain.catalog import RESOURCES, flavor_resources
from vmledger.domain.server import Server
from vmledger.projections.store import ReadStore, RowWriter

TABLE = "vmledger_allocations"
COLUMNS = ("server_id", "host", *RESOURCES)


def allocation_of(doc: dict[str, Any]) -> tuple[Any, ...] | None:
    """(host, vCPUs, RAM MB, disk GB) a server document holds; None when it holds
    nothing."""
    host = doc.get("host")
    vm_state = doc.get("vm_state")
    if (not host or vm_state == lc.DELETED or doc.get("unplaced")
            or (vm_state == lc.SHELVED_OFFLOADED and doc.get("task_state") is None)):
        return None
    flavors = [doc.get("flavor"), doc.get("old_flavor")]
    pending = doc.get("pending")
    if isinstance(pending, dict) and pending.get("action") == "resize":
        params = pending.get("params")
        if isinstance(params, dict):
            flavors.append(params.get("flavor"))
    held = [flavor_resources(flavor) for flavor in flavors]
    return (str(host), *(sum(h[resource] for h in held) for resource in RESOURCES))


class Allocations:
    """A :class:`~vmledger.projections.servers.ViewExtension` with one row per server
    holding resources."""

    #: follows the folded server documents (see :meth:`AllocationsBatch.server_folded`)
    event_types: tuple[type, ...] = (Server.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (server_id TEXT PRIMARY KEY,"
                " host TEXT NOT NULL, vcpus INTEGER NOT NULL, ram INTEGER NOT NULL,"
                " disk INTEGER NOT NULL)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_host ON {TABLE}"
                " (host, vcpus, ram, disk)"),
        ]

    def batch(self, writer: RowWriter, *, empty: bool) -> AllocationsBatch:
        return AllocationsBatch(writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))


class AllocationsBatch:
    """One transaction's allocations: each changed server's row written (or deleted)
    once, from its document as the transaction leaves it."""

    def __init__(self, writer: RowWriter, *, empty: bool) -> None:
        self.writer = writer
        self.empty = empty
        #: the folded document of each server changed in the transaction (the servers
        #: view folds each in place: at write time it is the final one)
        self.docs: dict[str, dict[str, Any]] = {}

    def fold(self, events: Sequence[Any]) -> None:
        """Nothing: rows follow the folded server documents."""

    def server_folded(self, server_id: str, doc: dict[str, Any], event: Any) -> None:
        self.docs[server_id] = doc

    def write(self) -> None:
        rows: list[tuple[Any, ...]] = []
        freed: list[str] = []
        for server_id, doc in self.docs.items():
            held = allocation_of(doc)
            if held is None:
                freed.append(server_id)
            else:
                rows.append((server_id, *held))
        if freed and not self.empty:
            curs, sql = self.writer.curs, self.writer.sql
            for i in range(0, len(freed), 500):
                chunk = freed[i:i + 500]
                curs.execute(sql(f"DELETE FROM {TABLE} WHERE server_id IN "
                                 f"({','.join('?' for _ in chunk)})"), chunk)
        self.writer.upsert(TABLE, COLUMNS, "server_id", rows)


def host_usage(store: ReadStore, hosts: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """What the servers on each host hold: ``vcpus``, ``ram`` (MB), ``disk`` (GB); only
    ``hosts`` when given. Hosts nothing is on are left out."""
    sql = (f"SELECT host, SUM(vcpus) AS vcpus, SUM(ram) AS ram, SUM(disk) AS disk "
           f"FROM {TABLE}")
    params: list[Any] = []
    if hosts is not None:
        if not hosts:
            return {}
        sql += f" WHERE host IN ({','.join('?' for _ in hosts)})"
        params.extend(hosts)
    rows = store.query(sql + " GROUP BY host", params)
    return {str(r["host"]): {k: int(r[k] or 0) for k in RESOURCES} for r in rows}


__all__ = ["COLUMNS", "TABLE", "Allocations", "allocation_of", "host_usage"]
