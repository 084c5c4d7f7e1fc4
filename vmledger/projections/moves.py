"""The moving servers read model: whose host agent enacts an action that involves two
hosts (a resize or migration to another host, a live migration, the confirm, revert or
delete of a moved server), when it is not the server's own host.

One row per server whose action in flight is to be enacted by another host's agent
(its destination, or the host keeping its old copy); none for every other server, so
the table holds only the few servers moving at a time. A host agent's queue is its own
servers' actions in flight less these, plus the rows naming it
(:meth:`~vmledger.projections.server_queries.ServerQueries.in_flight`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server
from vmledger.projections.store import RowWriter

TABLE = "vmledger_acting_hosts"
#: the actions that may give a server a row, or end the one it has: a command of any
#: other touches this table not at all
_MOVE_RELATED = frozenset({"resize", "migrate", "live_migrate", "confirm_resize",
                           "revert_resize", "delete", "soft_delete"})


def acting_host_of(doc: dict[str, Any]) -> str | None:
    """The host whose agent enacts the server's action in flight (None: none in
    flight)."""
    pending = doc.get("pending")
    if not isinstance(pending, dict) or not pending.get("action"):
        return None
    params = pending.get("params")
    return lc.acting_host(str(pending["action"]), doc.get("host"),
                          params if isinstance(params, dict) else None,
                          doc.get("migration_source"), pending.get("host"))


class MovingServers:
    """A :class:`~vmledger.projections.servers.ViewExtension`: a row per server whose
    action in flight another host enacts."""

    event_types: tuple[type, ...] = ()

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (server_id TEXT PRIMARY KEY,"
                " host TEXT NOT NULL)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_host ON {TABLE} (host, server_id)"),
        ]

    def batch(self, writer: RowWriter, *, empty: bool) -> MovingBatch:
        return MovingBatch(writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))


class MovingBatch:
    """One transaction's rows, from each changed server's final document."""

    #: events that change nothing the acting host is worked out from (the action in
    #: flight, its parameters and host, the server's host): a row is as it was
    unchanged_by: tuple[type, ...] = (Server.HypervisorCalled, Server.HypervisorCallStarted,
                                      Server.TaskAdvanced, Server.LockChanged)

    def __init__(self, writer: RowWriter, *, empty: bool) -> None:
        self.writer = writer
        self.empty = empty
        self.docs: dict[str, dict[str, Any]] = {}

    def fold(self, events: Sequence[Any]) -> None:
        """Nothing: rows follow the folded server documents."""

    def server_folded(self, server_id: str, doc: dict[str, Any], event: Any) -> None:
        # (an event's fields are in its instance's dict: ``getattr`` raised and
        # formatted an AttributeError for every event without an action)
        if (event.__dict__.get("action") in _MOVE_RELATED
                or isinstance(event, Server.StateReset)):
            self.docs[server_id] = doc

    def write(self) -> None:
        rows: list[tuple[str, str]] = []
        others: list[str] = []
        for server_id, doc in self.docs.items():
            acting = acting_host_of(doc)
            if acting is not None and acting != doc.get("host"):
                rows.append((server_id, acting))
            else:
                others.append(server_id)
        curs, sql = self.writer.curs, self.writer.sql
        if others and not self.empty:
            for i in range(0, len(others), 500):
                chunk = others[i:i + 500]
                curs.execute(sql(f"DELETE FROM {TABLE} WHERE server_id IN "
                                 f"({','.join('?' for _ in chunk)})"), chunk)
        self.writer.upsert(TABLE, ("server_id", "host"), "server_id", rows)


__all__ = ["TABLE", "MovingServers", "acting_host_of"]
