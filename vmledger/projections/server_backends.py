"""The servers view on each database: SQLite's (in the application's own database, under
its writer lock) and PostgreSQL's, with what differs between them: how the tracking
position is read and locked (PostgreSQL: the position and a command's rows in one wait),
what a bulk load sets on SQLite, and how a rebuild empties the tables.

The view itself (its schema and layouts) is :mod:`vmledger.projections.servers`; its
fold, :mod:`vmledger.projections.folding`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.rows import tuple_row

from vmledger.projections.extensions import ViewExtension
from vmledger.projections.pg_statements import MergedWrites
from vmledger.projections.servers import (
    _BULK,
    _TABLE_NAME,
    LogAfterPosition,
    PositionAndRows,
    ServersView,
)
from vmledger.projections.store import PostgresStore, SQLiteStore, loads


class SQLiteServersView(ServersView, SQLiteStore, SQLiteTrackingRecorder):
    """The servers view in the application's own SQLite database (same writer lock)."""

    def __init__(self, datastore: SQLiteDatastore,
                 extensions: Sequence[ViewExtension] = ()) -> None:
        self.extensions = tuple(extensions)
        self._init_layouts()
        SQLiteTrackingRecorder.__init__(self, datastore)

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.create_statements()]

    @contextmanager
    def transaction(self, *, commit: bool = True, flushed: bool = True) -> Iterator[Any]:
        with super().transaction(commit=commit, flushed=flushed) as curs:
            if not (commit and _BULK.get()):
                yield curs
                return
            # a connection setting (of the pool's connection this transaction holds):
            # restored before the connection goes back
            curs.execute("PRAGMA secure_delete")
            row = curs.fetchone()
            previous = int(row[0]) if row is not None else 1
            curs.execute("PRAGMA secure_delete = 0")
            try:
                yield curs
            finally:
                curs.execute(f"PRAGMA secure_delete = {previous}")

    def max_tracking_id(self, application_name: str) -> int | None:
        """The library's query, run as one statement outside an explicit transaction
        (a single SELECT reads a consistent snapshot on its own): every catch-up and
        every pass of the agent and the timer reads the position first, and the
        library's BEGIN and ROLLBACK around it were two more statements each time."""
        try:
            with self.datastore.get_connection(commit=False) as conn, \
                    conn.cursor() as curs:
                curs.execute(self.select_max_tracking_id_statement, [application_name])
                row = curs.fetchone()
        except sqlite3.Error:  # (no table yet...): the library's way, raising its error
            return super().max_tracking_id(application_name)
        return None if row is None or row[0] is None else int(row[0])

    def _delete_tracking(self, curs: Any) -> None:
        curs.execute("DELETE FROM tracking WHERE application_name = ?",
                     [self.layout.name])

    def _advance_position(self, curs: Any, tracking: Tracking) -> None:
        # the position's row, read locked in this transaction, updated in place (the
        # library's upsert, with its named parameters and checks, cost more)
        if self.datastore.single_row_tracking:
            curs.execute("UPDATE tracking SET notification_id = ? WHERE application_name = ?"
                         " RETURNING 1", [tracking.notification_id, tracking.application_name])
            if curs.fetchone() is not None:
                return
        self._insert_tracking(curs, tracking)  # no row yet (the first fold)

    def _position_sql(self) -> Any:
        return "SELECT MAX(notification_id) AS n FROM tracking WHERE application_name = ?"



#: a rebuild empties a read model's table of more than this many bytes with TRUNCATE
TRUNCATE_BYTES = 256 * 1024


class PostgresServersView(ServersView, PostgresStore, PostgresTrackingRecorder):
    """The servers view in the application's PostgreSQL database."""

    def __init__(self, datastore: PostgresDatastore,
                 extensions: Sequence[ViewExtension] = ()) -> None:
        self.extensions = tuple(extensions)
        self._init_layouts()
        PostgresTrackingRecorder.__init__(self, datastore,
                                          tracking_table_name="vmledger_views_tracking")
        from psycopg.sql import SQL

        for statement in self.create_statements():
            self.sql_create_statements.append(SQL(statement))  # type: ignore[arg-type]

    def _empty_tables(self, curs: Any) -> None:
        # a rebuild (bulk): TRUNCATE instead of deleting row by row, which leaves every
        # old row behind, dead, for the fold's inserts and the index builds to step over
        # until a vacuum (the index builds of a rebuild took most of its time). It locks
        # the tables until the clear commits: the position first, as a command's fold
        # takes them (no deadlock with one)
        if not _BULK.get():
            return
        from psycopg.sql import SQL, Identifier

        self._locked_position(curs)
        tables = list(dict.fromkeys(name for statement in self.create_statements()
                                    for name in _TABLE_NAME.findall(statement)))
        # the tables of more than a few pages (a small one is emptied faster by the
        # delete: a TRUNCATE makes and syncs new files)
        curs.execute("SELECT t AS name FROM unnest(%s::text[]) AS t "
                     "WHERE pg_relation_size(format('%%I.%%I', %s::text, t)::regclass)"
                     " > %s", [tables, self.datastore.schema, TRUNCATE_BYTES])
        large = [row["name"] for row in curs.fetchall()]
        if large:
            curs.execute(SQL("TRUNCATE {0}").format(
                SQL(", ").join(Identifier(self.datastore.schema, t) for t in large)))

    def _delete_tracking(self, curs: Any) -> None:
        from psycopg.sql import SQL, Identifier

        curs.execute(SQL("DELETE FROM {0}.{1} WHERE application_name = %s").format(
            Identifier(self.datastore.schema), Identifier(self.tracking_table_name)),
            [self.layout.name])

    def _position_sql(self) -> Any:
        from psycopg.sql import SQL, Identifier

        return SQL("SELECT MAX(notification_id) AS n FROM {0}.{1} "
                   "WHERE application_name = %s").format(
            Identifier(self.datastore.schema), Identifier(self.tracking_table_name))

    def _position_and_rows(self, curs: Any, rows: Sequence[Any]
                           ) -> tuple[int, dict[str, dict[str, Any] | None] | None]:
        ids = list(dict.fromkeys(str(row[1]) for row in rows))
        if len(ids) > 500:
            return self._locked_position(curs), None
        return self.queue_position_and_rows(curs, ids)(curs)

    def queue_position_and_rows(self, curs: Any, ids: Sequence[str]) -> PositionAndRows:
        # one wait for both: the documents' read is queued right behind the position's
        # lock in the command's pipeline (the order they were read in one by one; the
        # documents' snapshot is taken once the lock is granted), and both are waited
        # for with the write's insert when queued in its first round trip
        curs.execute(self._locked_position_sql(), [self.layout.name], prepare=True)
        reader = curs.connection.cursor(row_factory=tuple_row)
        reader.execute(self._sql("SELECT id, doc FROM {t} WHERE id = ANY(?)"), [list(ids)],
                       prepare=True)

        def taken(now: Any) -> tuple[int, dict[str, dict[str, Any] | None] | None]:
            try:
                row = curs.fetchone()  # (nothing else ran on ``curs`` since)
                found = {key: loads(doc) for key, doc in reader.fetchall()}
            finally:
                reader.close()
            if row is None:  # no tracking row yet: made, then locked
                return self._locked_position(now), None
            return int(row["n"] or 0), {key: found.get(key) for key in ids}

        return taken

    def queue_log_after_position(self, curs: Any, events_table: str, limit: int
                                 ) -> LogAfterPosition:
        # read in the statements' own snapshots, taken once the position's lock (queued
        # before them) is granted, in a transaction holding the log's write lock: every
        # row before this write's is committed, and no other can appear. With the rows,
        # the documents of their servers, as the fold loads them
        connection = curs.connection
        # (per layout: the documents' table is the layout's)
        made: dict[str, tuple[bytes, bytes]] = self.__dict__.setdefault("_after_texts", {})
        found = made.get(self.layout.name)
        if found is None:
            from psycopg.sql import SQL, Identifier

            names = (Identifier(self.datastore.schema), Identifier(self.tracking_table_name),
                     Identifier(events_table))
            after = SQL("notification_id > (SELECT COALESCE(MAX(notification_id), 0) "
                        "FROM {0}.{1} WHERE application_name = %s)").format(*names)
            found = made[self.layout.name] = (SQL(
                "WITH p AS (SELECT COALESCE(MAX(notification_id), 0) AS n FROM {0}.{1} "
                "WHERE application_name = %s) SELECT p.n, e.notification_id, "
                "e.originator_id, e.originator_version, e.topic, e.state FROM p LEFT JOIN "
                "LATERAL (SELECT notification_id, originator_id, originator_version, "
                "topic, state FROM {0}.{2} WHERE notification_id > p.n ORDER BY "
                "notification_id LIMIT %s) e ON true").format(*names).as_bytes(), (
                self._sql("SELECT id, doc FROM {t}").encode()
                + SQL(" WHERE id IN (SELECT originator_id::text FROM {0}.{2} WHERE {3} "
                      "ORDER BY notification_id LIMIT %s)").format(
                          *names, after).as_bytes()))
        log, docs = (connection.cursor(row_factory=tuple_row) for _ in range(2))
        log.execute(found[0], [self.layout.name, limit], prepare=True)
        docs.execute(found[1], [self.layout.name, limit], prepare=True)
        answer: list[tuple[int, list[Any], dict[str, dict[str, Any]]]] = []

        def taken() -> tuple[int, list[Any], dict[str, dict[str, Any]]]:
            if not answer:  # (taken by the position's reader and by the missed rows')
                try:
                    rows = log.fetchall()
                    found_docs = {key: loads(doc) for key, doc in docs.fetchall()}
                finally:
                    log.close()
                    docs.close()
                answer.append((int(rows[0][0]), [
                    (int(nid), oid, int(version), str(topic), bytes(state))
                    for _, nid, oid, version, topic, state in rows if nid is not None],
                    found_docs))
            return answer[0]

        return taken

    def fold_written(self, curs: Any, rows: Sequence[Any], decode: Any,
                     missed: Callable[[Any, int, int], Sequence[Any] | None],
                     queued: PositionAndRows | None = None) -> bool:
        # the fold's row writes and its tracking record: one statement at its end
        merged = MergedWrites(curs)
        folded = super().fold_written(merged, rows, decode, missed, queued)
        merged.flush()
        return folded

    def _advance_position(self, curs: Any, tracking: Tracking) -> None:
        # the library's statement, its answer not waited for: it cannot be refused
        # (the row is locked by this transaction and holds an earlier position), and
        # in a command's pipeline reading it would cost a round trip; in a command's
        # fold, sent with its row writes
        if not self.datastore.single_row_tracking:
            self._insert_tracking(curs, tracking)
            return
        queue = getattr(curs, "queue_rows", None)
        if queue is not None:
            queue(self._advance_sql(), 2, [(tracking.application_name,
                                            tracking.notification_id)])
            return
        curs.execute(self.insert_tracking_statement, {
            "application_name": tracking.application_name,
            "notification_id": tracking.notification_id}, prepare=True)

    def _advance_sql(self) -> str:
        found: str | None = self.__dict__.get("_advance_text")
        if found is None:
            from psycopg.sql import SQL, Identifier

            found = self.__dict__["_advance_text"] = SQL(
                "INSERT INTO {0}.{1} (application_name, notification_id) VALUES (%s, %s) "
                "ON CONFLICT (application_name) DO UPDATE SET notification_id = "
                "excluded.notification_id WHERE {0}.{1}.notification_id < "
                "excluded.notification_id").format(
                Identifier(self.datastore.schema),
                Identifier(self.tracking_table_name)).as_string()
        return found

    def _locked_position_sql(self) -> Any:
        found = self.__dict__.get("_locked_text")  # (rendered once, not per command)
        if found is not None:
            return found
        from psycopg.sql import SQL, Identifier

        found = self.__dict__["_locked_text"] = SQL(
            "SELECT notification_id AS n FROM {0}.{1} WHERE application_name = %s "
            "ORDER BY notification_id DESC LIMIT 1 FOR UPDATE").format(
            Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
        ).as_bytes()
        return found

    def _locked_position(self, curs: Any) -> int:
        # the tracking row is locked until the transaction ends: a catch-up and a
        # command folding its own events take turns on it (a missing row is made first,
        # at 0, so that there is always one to lock)
        from psycopg.sql import SQL, Identifier

        table = (Identifier(self.datastore.schema), Identifier(self.tracking_table_name))
        name = self.layout.name
        select = self._locked_position_sql()
        for _ in range(2):
            curs.execute(select, [name], prepare=True)
            row = curs.fetchone()
            if row is not None:
                return int(row["n"] or 0)
            curs.execute(SQL("INSERT INTO {0}.{1} (application_name, notification_id) "
                             "VALUES (%s, 0) ON CONFLICT DO NOTHING").format(*table),
                         [self.layout.name])
        return 0
