"""The migrations read model: Nova's migration records (``os-migrations``), from the log.

A resize is a migration to the server's own host (Nova's ``allow_resize_to_same_host``):
the request creates the record (``pre-migrating``), the host agent's steps move it on
(``migrating``, ``post-migrating``), the outcome finishes it (``finished`` or ``error``)
and a confirm or revert — by a user, an administrator or the timer — settles it
(``confirming`` → ``confirmed``, ``reverting`` → ``reverted``). Deleting a server whose
resize waits for confirmation confirms it, as Nova does; deleting one mid-resize leaves
the record in ``error``.

An evacuation (a server rebuilt on another host, its own being down) is a record of
type ``evacuation`` from the host it left to the one it went to: ``accepted`` with the
request, then ``done`` or ``failed``, and ``completed`` once the host it left is back
and has removed its old guest (Nova's statuses for it).

The statuses are read from the folded server document (its ``migration_status`` and
task state, through :func:`vmledger.domain.lifecycle.migration_status_of`), so this view
says what the servers view says. Records are numbered in log order (1, 2, …): a rebuild
gives every record the same id again; the UUID is derived from the server and the
resize's request id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.server import Server
from vmledger.projections.store import MarkerNotFound, ReadStore, RowWriter, stored_ts

TABLE = "vmledger_migrations"
COLUMNS = ("id", "uuid", "server_id", "request_id", "status", "migration_type",
           "source_compute", "source_node", "dest_compute", "dest_node", "dest_host",
           "old_flavor_id", "new_flavor_id", "user_id", "project_id", "created_at",
           "updated_at")
#: the namespace of migration UUIDs (uuid5 of "<server id> <request id>")
_NAMESPACE = uuid.UUID("0b9e3c4d-6a7f-4e21-9c58-3f1d2e7a8b60")

Row = dict[str, Any]
#: the lifecycle actions that evacuate a server
_EVACUATIONS = ("evacuate", "evacuate_stopped")
#: the lifecycle actions whose record begins ``pre-migrating``, and their record type
_COLD = {"resize": "resize", "migrate": "migration"}
#: the statuses a migration record begins with (see ``begins`` in
#: :meth:`MigrationsBatch.server_folded`)
_BEGIN_STATUSES = frozenset({"pre-migrating", "accepted", "queued"})


def migration_uuid(server_id: str, request_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{server_id} {request_id}"))


def flavor_number(flavor: Any) -> int | None:
    """Nova's ``*_instance_type_id`` is the flavor's integer database id; here the
    flavor id when it is a number (the default flavors' are), else null."""
    if not isinstance(flavor, dict):
        return None
    value = flavor.get("id")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return None


class Migrations:
    """A :class:`~vmledger.projections.servers.ViewExtension` with one row per resize."""

    #: folds server documents (see :meth:`MigrationsBatch.server_folded`), no other events
    event_types: tuple[type, ...] = ()

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY,"
                " uuid TEXT NOT NULL, server_id TEXT NOT NULL, request_id TEXT NOT NULL,"
                " status TEXT, migration_type TEXT, source_compute TEXT, source_node TEXT,"
                " dest_compute TEXT, dest_node TEXT, dest_host TEXT, old_flavor_id INTEGER,"
                " new_flavor_id INTEGER, user_id TEXT, project_id TEXT, created_at TEXT,"
                " updated_at TEXT)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_server ON {TABLE} (server_id, id)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_uuid ON {TABLE} (uuid)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_page ON {TABLE} (created_at, id)"),
        ]

    def batch(self, writer: RowWriter, *, empty: bool) -> MigrationsBatch:
        return MigrationsBatch(writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))


class MigrationsBatch:
    """One transaction's fold: each server's newest record loaded once, each changed
    record written once."""

    #: events that change none of the document's fields a record follows (the
    #: migration status, task and vm state, the action in flight, host and flavor): a
    #: record is as it was before them
    unchanged_by: tuple[type, ...] = (Server.HypervisorCalled, Server.HypervisorCallStarted,
                                      Server.LockChanged)
    #: :meth:`preload` not in a command's own fold (a few servers, most with no move in
    #: flight): there a server's record is read when it is needed (:meth:`_latest`),
    #: which is rarely
    preload_bulk_only = True

    def __init__(self, writer: RowWriter, *, empty: bool) -> None:
        self.writer = writer
        self.empty = empty
        #: by server id: its newest record (None: it has none)
        self.latest: dict[str, Row | None] = {}
        #: changed records, by (server id, request id), in the order of their first change
        self.changed: dict[tuple[str, str], Row] = {}

    def fold(self, events: Sequence[Any]) -> None:
        """Nothing: records follow the folded server documents."""

    def preload(self, server_ids: list[str]) -> None:
        """The newest record of each of these servers, in a few queries (a bulk load's
        alone: :attr:`preload_bulk_only`)."""
        self._read(server_ids)

    def _read(self, server_ids: list[str]) -> None:
        wanted = [sid for sid in server_ids if sid not in self.latest]
        curs = self.writer.curs
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            for sid in chunk:
                self.latest[sid] = None
            curs.execute(self.writer.sql(
                f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE server_id IN "
                f"({','.join('?' for _ in chunk)}) ORDER BY id"), chunk)
            for row in curs.fetchall():  # by id: each server's newest comes last
                found = (dict(row) if hasattr(row, "keys")
                         else dict(zip(COLUMNS, row, strict=True)))
                self.latest[found["server_id"]] = found

    def _latest(self, server_id: str) -> Row | None:
        if server_id not in self.latest:
            if self.empty:
                self.latest[server_id] = None
            else:
                self._read([server_id])
        return self.latest[server_id]

    def server_folded(self, server_id: str, doc: dict[str, Any], event: Any) -> None:
        """``event`` was folded into the server's document ``doc``."""
        status = doc.get("migration_status")
        latest = self.latest
        if status is None:  # no migration (the common case: no lookup)
            if doc.get("vm_state") != lc.DELETED:
                return
            current = latest[server_id] if server_id in latest else self._latest(server_id)
            if current is None or current["status"] in st.MIGRATION_SETTLED:
                return
            # deleting a server confirms the resize waiting for it; one mid-resize fails
            status = "confirmed" if current["status"] == "finished" else "error"
        else:
            status = st.migration_status_of(status, doc.get("task_state"))
            current = latest[server_id] if server_id in latest else self._latest(server_id)
            if status not in _BEGIN_STATUSES and (current is None
                                                  or current["status"] == status):
                return  # nothing begins, nothing changes
        pending = doc.get("pending") or {}
        begins = (status == "pre-migrating" and pending.get("action") in _COLD) or (
            status == "accepted" and pending.get("action") in _EVACUATIONS) or (
            status == "queued" and pending.get("action") == "live_migrate")
        if begins and (current is None
                       or current["request_id"] != pending.get("request_id")):
            self._begin(server_id, doc, pending, event)
            return
        if current is None or current["status"] == status:
            return
        current["status"] = status
        current["updated_at"] = stored_ts(event.timestamp)
        self.changed[(server_id, current["request_id"])] = current

    def _begin(self, server_id: str, doc: dict[str, Any], pending: dict[str, Any],
               event: Any) -> None:
        host = doc.get("host")
        request_id = str(pending.get("request_id"))
        params = pending.get("params") or {}
        new_flavor = params.get("flavor") or doc.get("flavor")
        action = pending.get("action")
        evacuation = action in _EVACUATIONS
        source = dest = host
        if evacuation:  # from the host it left (recorded with the request) to its new one
            new_flavor = doc.get("flavor")
            source = params.get("source_host") or host
            dest = host if host != source else None  # None: no host could take it
        elif params.get("dest_host"):  # a move to another host (the request chose it)
            source, dest = params.get("source_host") or host, params["dest_host"]
        kind = ("evacuation" if evacuation else "live-migration" if action == "live_migrate"
                else _COLD.get(str(action), "resize"))
        row: Row = {
            "id": None, "uuid": migration_uuid(server_id, request_id),
            "server_id": server_id, "request_id": request_id,
            "status": ("accepted" if evacuation else "queued" if kind == "live-migration"
                       else "pre-migrating"),
            "migration_type": kind,
            "source_compute": source, "source_node": source,
            "dest_compute": dest, "dest_node": dest, "dest_host": None,
            "old_flavor_id": flavor_number(doc.get("flavor")),
            "new_flavor_id": flavor_number(new_flavor),
            "user_id": getattr(event, "user_id", None) or doc.get("user_id"),
            "project_id": getattr(event, "project_id", None) or doc.get("project_id"),
            # as Nova's: created now, never updated yet
            "created_at": stored_ts(event.timestamp), "updated_at": None,
        }
        self.latest[server_id] = row
        self.changed[(server_id, request_id)] = row

    def write(self) -> None:
        if not self.changed:
            return
        rows = list(self.changed.values())
        if any(row["id"] is None for row in rows):
            number = 0
            if not self.empty:
                curs = self.writer.curs
                curs.execute(self.writer.sql(f"SELECT MAX(id) AS n FROM {TABLE}"))
                found = curs.fetchone()
                value = found["n"] if hasattr(found, "keys") else found[0]
                number = int(value or 0)
            for row in rows:  # in log order: a rebuild numbers them the same
                if row["id"] is None:
                    number += 1
                    row["id"] = number
        self.writer.upsert(TABLE, COLUMNS, "id", [tuple(row[c] for c in COLUMNS)
                                                   for row in rows])


def list_migrations(store: ReadStore, *, equal: dict[str, str] | None = None,
                    host: str | None = None, since: datetime | None = None,
                    before: datetime | None = None, newest_first: bool = False,
                    limit: int | None = None, marker: str | None = None) -> list[Row]:
    """Migration records, as rows: ``equal`` are column = value filters, ``host`` matches
    the source or the destination, ``since``/``before`` bound ``updated_at`` (records
    never updated are left out, as Nova's). Oldest first (by id) unless ``newest_first``
    (``created_at`` then id, descending: Nova's order from 2.59, which pages with
    ``limit`` and ``marker``, a record's UUID; an unknown marker raises
    :class:`MarkerNotFound`)."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (equal or {}).items():
        assert column in COLUMNS
        where.append(f"{column} = ?")
        params.append(value)
    if host is not None:
        where.append("(source_compute = ? OR dest_compute = ?)")
        params.extend([host, host])
    if since is not None:
        where.append("updated_at >= ?")
        params.append(stored_ts(since))
    if before is not None:
        where.append("updated_at <= ?")
        params.append(stored_ts(before))
    if marker is not None:
        found = store.query(f"SELECT created_at, id FROM {TABLE} WHERE uuid = ?", [marker])
        if not found:
            raise MarkerNotFound(marker)
        created, number = found[0]["created_at"], found[0]["id"]
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params.extend([created, created, number])
    sql = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC" if newest_first else " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [{c: row[c] for c in COLUMNS} for row in store.query(sql, params)]


__all__ = [
    "COLUMNS",
    "TABLE",
    "MarkerNotFound",
    "Migrations",
    "flavor_number",
    "list_migrations",
    "migration_uuid",
]
