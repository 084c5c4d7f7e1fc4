"""Each project's quota usage, kept as sums: its servers that are not deleted, and
their flavors' vCPUs and RAM (Nova's legacy quota counting; a server being resized
counts the larger of its flavors until the resize is confirmed or reverted).

Every create checks the quota, and ``/limits`` shows the usage: read from one row per
project (:func:`project_usage`), they cost the same however many servers the project
has. Each transaction of the servers view changes a project's row by the difference
it makes: what its changed servers counted before (their documents as the view's rows
held them, which the servers view loads anyway) and what they count now; nothing is
read for it, and a server that counts the same as before (most actions) moves no sum.

A database whose servers were folded before the sums were kept gets them summed once,
by the first transaction that writes the view after the upgrade (the marker table says
whether they are kept); until then the reads sum the servers themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server
from vmledger.projections.store import ReadStore, RowWriter

TABLE = "vmledger_project_usage"
#: one row once the sums are kept (absent on a database folded before they were)
MARKER_TABLE = "vmledger_project_usage_kept"
_SUMS = ("instances", "cores", "ram")
#: where a server's flavors are in its document
_FLAVOR_PATHS = (("flavor",), ("old_flavor",), ("pending", "params", "flavor"))
#: the servers view's table (the sums are made from its rows)
SERVERS = "vmledger_servers"


def _number(doc: dict[str, Any], path: tuple[str, ...], key: str) -> int:
    value: Any = doc
    for part in (*path, key):
        if not isinstance(value, dict):
            return 0
        value = value.get(part)
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def quota_of(doc: dict[str, Any]) -> tuple[str, int, int] | None:
    """(project, vCPUs, RAM MB) a server counts against its project's quota; None once
    deleted (or without a project)."""
    project = doc.get("project_id")
    if project is None or doc.get("vm_state") == lc.DELETED:
        return None
    return (str(project), max(_number(doc, p, "vcpus") for p in _FLAVOR_PATHS),
            max(_number(doc, p, "ram") for p in _FLAVOR_PATHS))


def largest_flavor_sql(key: str, dialect: str) -> str:
    """SQL for a servers view row's ``key`` (``vcpus``, ``ram``) of the larger of its
    flavors (see :func:`quota_of`)."""
    if dialect == "postgres":
        return "COALESCE(GREATEST({}), 0)".format(", ".join(
            "((doc::jsonb)#>>'{{{}}}')::bigint".format(",".join([*path, key]))
            for path in _FLAVOR_PATHS))
    return "max({})".format(", ".join(
        f"COALESCE(json_extract(doc, '$.{'.'.join(path)}.{key}'), 0)"
        for path in _FLAVOR_PATHS))


def _sums_sql(dialect: str) -> str:
    """Each project's sums, from the servers view's rows."""
    return (f"SELECT project_id, COUNT(*) AS instances,"
            f" COALESCE(SUM({largest_flavor_sql('vcpus', dialect)}), 0) AS cores,"
            f" COALESCE(SUM({largest_flavor_sql('ram', dialect)}), 0) AS ram"
            f" FROM {SERVERS} WHERE deleted = 0 AND project_id IS NOT NULL")


class ProjectUsage:
    """A :class:`~vmledger.projections.servers.ViewExtension` keeping each project's
    quota usage."""

    #: follows the folded server documents (see :meth:`ProjectUsageBatch.server_changed`); no events
    event_types: tuple[type, ...] = ()

    def __init__(self) -> None:
        #: whether the sums are known to be kept (the marker never goes once written)
        self.kept = False

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (project_id TEXT PRIMARY KEY,"
                " instances INTEGER NOT NULL, cores INTEGER NOT NULL, ram INTEGER NOT NULL)"),
            sql(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (kept INTEGER PRIMARY KEY)"),
        ]

    @property
    def write_always(self) -> bool:
        """Whether a fold writes this read model's batch whatever it folded: until the
        sums are known to be kept (the first write checks, and sums them once)."""
        return not self.kept

    def batch(self, writer: RowWriter, *, empty: bool) -> ProjectUsageBatch:
        return ProjectUsageBatch(self, writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))
        # an empty view's sums are kept: they are all zero
        _mark(curs, sql)
        self.kept = True


def _mark(curs: Any, sql: Callable[[str], str]) -> None:
    curs.execute(sql(f"INSERT INTO {MARKER_TABLE} (kept) VALUES (1) ON CONFLICT (kept)"
                     " DO NOTHING"))


class ProjectUsageBatch:
    """One transaction's change to the projects' sums."""

    #: events that change none of the document's fields a server's count is worked out
    #: from (project, vm state, flavors, the action in flight's parameters): a fold of
    #: those alone (a lock, an agent's steps) works nothing out (``server_changed`` is
    #: not called before them)
    unchanged_by: tuple[type, ...] = (Server.LockChanged, Server.HypervisorCalled,
                                      Server.HypervisorCallStarted, Server.TaskAdvanced,
                                      Server.MigrationSteered, Server.EvacuatedGuestRemoved)

    def __init__(self, extension: ProjectUsage, writer: RowWriter, *, empty: bool) -> None:
        self.extension = extension
        self.writer = writer
        self.empty = empty
        self.docs: dict[str, dict[str, Any]] = {}
        #: what each changed server counted before the transaction (None: nothing)
        self.before: dict[str, tuple[str, int, int] | None] = {}

    def fold(self, events: Sequence[Any]) -> None:
        """Nothing: the sums follow the folded server documents."""

    def server_changed(self, server_id: str, doc: dict[str, Any]) -> None:
        self.docs[server_id] = doc  # folded in place: final when written
        # what it counted before: its document as the view's row holds it, before the
        # transaction's first event (nothing for a server new to the view)
        self.before[server_id] = quota_of(doc)

    def write(self) -> None:
        curs, sql = self.writer.curs, self.writer.sql
        if not self.extension.kept:
            curs.execute(sql(f"SELECT kept FROM {MARKER_TABLE}"))
            if not curs.fetchall():
                _mark(curs, sql)
                if not self.empty:
                    # a view folded before the sums were kept: its rows (this
                    # transaction's written already) summed once
                    curs.execute(sql(f"DELETE FROM {TABLE}"))
                    curs.execute(sql(
                        f"INSERT INTO {TABLE} (project_id, {', '.join(_SUMS)}) "
                        + _sums_sql(self.writer.dialect) + " GROUP BY project_id"))
                    self.extension.kept = True
                    return
            self.extension.kept = True
        change: dict[str, list[int]] = {}
        for server_id, doc in self.docs.items():
            before, now = self.before.get(server_id), quota_of(doc)
            if before == now:
                continue  # counts as before (most actions): no sum moves
            for counted, sign in ((before, -1), (now, 1)):
                if counted is not None:
                    sums = change.setdefault(counted[0], [0, 0, 0])
                    sums[0] += sign
                    sums[1] += sign * counted[1]
                    sums[2] += sign * counted[2]
        changed = [(project, *sums) for project, sums in sorted(change.items()) if any(sums)]
        if changed:
            updates = ", ".join(f"{c} = {TABLE}.{c} + excluded.{c}" for c in _SUMS)
            curs.executemany(sql(
                f"INSERT INTO {TABLE} (project_id, {', '.join(_SUMS)}) VALUES (?, ?, ?, ?)"
                f" ON CONFLICT (project_id) DO UPDATE SET {updates}"), changed)


def project_usage(store: ReadStore, project_id: str) -> dict[str, int]:
    """A project's servers that are not deleted: how many (``instances``), their
    flavors' vCPUs (``cores``) and RAM (``ram``), from the project's sums (from its
    servers while a database folded before the sums were kept has not been written)."""
    if store.query(f"SELECT kept FROM {MARKER_TABLE}"):
        rows = store.query(f"SELECT {', '.join(_SUMS)} FROM {TABLE} WHERE project_id = ?",
                           [project_id])
    else:
        rows = store.query(_sums_sql(store.dialect) + " AND project_id = ? GROUP BY project_id",
                           [project_id])
    row = rows[0] if rows else {}
    return {key: int(row[key] or 0) if rows else 0 for key in _SUMS}


__all__ = ["TABLE", "ProjectUsage", "largest_flavor_sql", "project_usage", "quota_of"]
