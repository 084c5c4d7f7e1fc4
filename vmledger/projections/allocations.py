"""The allocations read model: what each server holds of its host (Nova's placement
allocations), from the folded server documents.

One row per server that holds resources on a host: its flavor's vCPUs, RAM (MB) and
disk (GB; see :func:`vmledger.domain.catalog.flavor_resources`). A
server being resized holds both flavors, from the request until it is confirmed or
reverted (Nova holds the old flavor for the migration and the new one for the server,
on the same host). A server moving to another host (a resize there, a cold or live
migration) holds its new flavor there too while it moves (a second row, consumer
``<server id>/move``), and a moved server holds its old flavor on the host it left
until confirmed or reverted (the same row). A server holds nothing once deleted,
while shelved and offloaded, or when no host could take it.

Beside the rows, one row per host keeps their sums (``vmledger_host_usage``: servers,
vCPUs, RAM, disk), changed by each transaction by the difference it makes: the
scheduler (:meth:`vmledger.fleet.Fleet.host_room`) and ``os-hypervisors`` read a host's
sums (:func:`host_usage`) in the same time however many servers it holds.
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
#: the per-host sums of :data:`TABLE`
HOSTS_TABLE = "vmledger_host_usage"
_SUMS = ("servers", *RESOURCES)


#: the consumer holding, on the other host, what a server moving between two hosts
#: holds there (``<server id>/move``): the new flavor on the destination while it moves,
#: the old one on the host it left until its resize or migration is confirmed or reverted
MOVE_SUFFIX = "/move"
_MOVES = ("resize", "migrate", "live_migrate")


def allocations_of(server_id: str, doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a server document holds: (consumer, host, vCPUs, RAM MB, disk GB) rows, one
    on its own host and, while it moves or its old copy is kept on another host, one
    there (consumer ``<server id>/move``); none when it holds nothing."""
    host = doc.get("host")
    vm_state = doc.get("vm_state")
    if (not host or vm_state == lc.DELETED or doc.get("unplaced")
            or (vm_state == lc.SHELVED_OFFLOADED and doc.get("task_state") is None)):
        return []
    own = [doc.get("flavor"), doc.get("old_flavor")]
    other: tuple[str, Any] | None = None
    pending = doc.get("pending")
    params = pending.get("params") if isinstance(pending, dict) else None
    params = params if isinstance(params, dict) else {}
    moving_to = doc.get("migration_dest")
    kept_at = doc.get("migration_source")
    if (isinstance(pending, dict) and pending.get("action") in _MOVES and moving_to
            and moving_to != host):
        other = (str(moving_to), params.get("flavor") or doc.get("flavor"))
    elif kept_at and kept_at != host:
        own = [doc.get("flavor")]
        other = (str(kept_at), doc.get("old_flavor"))
    elif isinstance(pending, dict) and pending.get("action") == "resize":
        own.append(params.get("flavor"))  # on its own host: both flavors
    rows = [(server_id, str(host), *_sums(own))]
    if other is not None:
        rows.append((server_id + MOVE_SUFFIX, other[0], *_sums([other[1]])))
    return rows


def _sums(flavors: list[Any]) -> tuple[int, ...]:
    held = [flavor_resources(flavor) for flavor in flavors]
    return tuple(sum(h[resource] for h in held) for resource in RESOURCES)


class Allocations:
    """A :class:`~vmledger.projections.servers.ViewExtension` with one row per server
    holding resources."""

    #: follows the folded server documents (see :meth:`AllocationsBatch.server_changed`); no events
    event_types: tuple[type, ...] = ()

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (server_id TEXT PRIMARY KEY,"
                " host TEXT NOT NULL, vcpus INTEGER NOT NULL, ram INTEGER NOT NULL,"
                " disk INTEGER NOT NULL)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_host ON {TABLE}"
                " (host, vcpus, ram, disk)"),
            sql(f"CREATE TABLE IF NOT EXISTS {HOSTS_TABLE} (host TEXT PRIMARY KEY,"
                " servers INTEGER NOT NULL, vcpus INTEGER NOT NULL, ram INTEGER NOT NULL,"
                " disk INTEGER NOT NULL)"),
            # a database whose allocations were written before the sums were kept: sum
            # them once (the sums are never empty while allocations exist, so this
            # reads nothing on any later start)
            sql(f"INSERT INTO {HOSTS_TABLE} (host, servers, vcpus, ram, disk)"
                f" SELECT host, COUNT(*), SUM(vcpus), SUM(ram), SUM(disk) FROM {TABLE}"
                f" WHERE NOT EXISTS (SELECT 1 FROM {HOSTS_TABLE}) GROUP BY host"
                " ON CONFLICT (host) DO NOTHING"),
        ]

    def batch(self, writer: RowWriter, *, empty: bool) -> AllocationsBatch:
        return AllocationsBatch(writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))
        curs.execute(sql(f"DELETE FROM {HOSTS_TABLE}"))


class AllocationsBatch:
    """One transaction's allocations: each changed server's row written (or deleted)
    once, from its document as the transaction leaves it."""

    #: events that change none of the document's fields a server's allocations are
    #: worked out from (host, states, flavors, the action in flight and its
    #: parameters, the hosts of a move): its rows are as they were before them, so a
    #: fold of those alone (a lock, the steps of a call) works nothing out
    #: (``server_changed`` is not called before them)
    unchanged_by: tuple[type, ...] = (Server.LockChanged, Server.HypervisorCalled,
                                      Server.HypervisorCallStarted, Server.MigrationSteered,
                                      Server.EvacuatedGuestRemoved)

    def __init__(self, writer: RowWriter, *, empty: bool) -> None:
        self.writer = writer
        self.empty = empty
        #: the folded document of each server changed in the transaction (the servers
        #: view folds each in place: at write time it is the final one)
        self.docs: dict[str, dict[str, Any]] = {}
        #: what each changed server's document held before the transaction
        self.held: dict[str, list[tuple[Any, ...]]] = {}

    def fold(self, events: Sequence[Any]) -> None:
        """Nothing: rows follow the folded server documents."""

    def server_changed(self, server_id: str, doc: dict[str, Any]) -> None:
        self.docs[server_id] = doc  # folded in place: final when written
        # what its document held before the transaction's first event: a server
        # holding the same after it (most actions) has no row to read or write
        self.held[server_id] = allocations_of(server_id, doc)

    def write(self) -> None:
        rows: list[tuple[Any, ...]] = []
        freed: list[str] = []
        holding: dict[str, list[tuple[Any, ...]]] = {}
        for server_id, doc in self.docs.items():
            now_held = allocations_of(server_id, doc)
            if now_held != self.held.get(server_id):
                holding[server_id] = now_held
        if not holding:
            return
        # each host's sums change by what its changed servers held before and hold now
        consumers = [c for sid in holding for c in (sid, sid + MOVE_SUFFIX)]
        before = {} if self.empty else self._held(consumers)
        change: dict[str, list[int]] = {}
        for server_id, held_rows in holding.items():
            now = {row[0]: row[1:] for row in held_rows}
            for consumer in (server_id, server_id + MOVE_SUFFIX):
                old, held = before.get(consumer), now.get(consumer)
                if old is not None and held is not None and tuple(old) == tuple(held):
                    continue  # held as before (most actions): no sums move, no row to write
                counted = 1 if consumer == server_id else 0  # a server counts on its host
                if old is not None:
                    sums = change.setdefault(old[0], [0] * len(_SUMS))
                    sums[0] -= counted
                    for i, value in enumerate(old[1:], start=1):
                        sums[i] -= value
                if held is None:
                    if old is not None:
                        freed.append(consumer)
                else:
                    rows.append((consumer, *held))
                    sums = change.setdefault(held[0], [0] * len(_SUMS))
                    sums[0] += counted
                    for i, value in enumerate(held[1:], start=1):
                        sums[i] += value
        curs, sql = self.writer.curs, self.writer.sql
        if freed:
            for i in range(0, len(freed), 500):
                chunk = freed[i:i + 500]
                curs.execute(sql(f"DELETE FROM {TABLE} WHERE server_id IN "
                                 f"({','.join('?' for _ in chunk)})"), chunk)
        self.writer.upsert(TABLE, COLUMNS, "server_id", rows)
        changed = [(host, *sums) for host, sums in sorted(change.items()) if any(sums)]
        if changed:
            updates = ", ".join(f"{c} = {HOSTS_TABLE}.{c} + excluded.{c}" for c in _SUMS)
            curs.executemany(sql(
                f"INSERT INTO {HOSTS_TABLE} (host, {', '.join(_SUMS)}) VALUES (?, ?, ?, ?, ?)"
                f" ON CONFLICT (host) DO UPDATE SET {updates}"), changed)

    def _held(self, server_ids: list[str]) -> dict[str, tuple[Any, ...]]:
        """What the servers held before this transaction: (host, vCPUs, RAM, disk)."""
        found: dict[str, tuple[Any, ...]] = {}
        curs, sql = self.writer.curs, self.writer.sql
        for i in range(0, len(server_ids), 500):
            chunk = server_ids[i:i + 500]
            curs.execute(sql(f"SELECT server_id, host, {', '.join(RESOURCES)} FROM {TABLE}"
                             f" WHERE server_id IN ({','.join('?' for _ in chunk)})"), chunk)
            for row in curs.fetchall():
                values = tuple(row.values()) if isinstance(row, dict) else tuple(row)
                found[str(values[0])] = (str(values[1]), *(int(v) for v in values[2:]))
        return found


def host_usage(store: ReadStore, hosts: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """What the servers on each host hold: ``servers`` (how many), ``vcpus``, ``ram``
    (MB), ``disk`` (GB); only ``hosts`` when given. Hosts nothing is on are left out.
    Read from the per-host sums: one row per host, however many servers it holds."""
    sql = (f"SELECT host, {', '.join(_SUMS)} FROM {HOSTS_TABLE}"
           " WHERE (servers > 0 OR vcpus > 0 OR ram > 0 OR disk > 0)")
    params: list[Any] = []
    if hosts is not None:
        if not hosts:
            return {}
        sql += f" AND host IN ({','.join('?' for _ in hosts)})"
        params.extend(hosts)
    rows = store.query(sql + " ORDER BY host", params)
    return {str(r["host"]): {k: int(r[k] or 0) for k in _SUMS} for r in rows}


def host_servers(store: ReadStore, host: str, servers_table: str
                 ) -> list[dict[str, str]]:
    """The servers holding resources on ``host``, by id: ``uuid`` and ``name`` (from the
    servers view's columns, ``servers_table``; no document read)."""
    rows = store.query(
        f"SELECT s.id AS id, s.name AS name FROM {TABLE} a JOIN {servers_table} s"
        " ON s.id = a.server_id WHERE a.host = ? ORDER BY s.id", [host])
    return [{"uuid": str(r["id"]), "name": str(r["name"] or "")} for r in rows]


__all__ = ["COLUMNS", "HOSTS_TABLE", "MOVE_SUFFIX", "TABLE", "Allocations", "allocations_of",
           "host_servers", "host_usage"]
