"""The SQLite application recorder, extended to write the tamper-evidence chain
(:mod:`vmledger.audit.chain`) and the request index in the same transaction as the events,
and to run the read models' fold there too (``in_transaction``). Each command's rows go in
one INSERT per table, and the datastore's connections keep their prepared statements
(:class:`StatementCachingPool`). Selected with the library's ``APPLICATION_RECORDER_TOPIC``
(see :mod:`vmledger.persistence`)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    ConnectionNotFromPoolError,
    ConnectionPoolClosedError,
    ConnectionUnavailableError,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
)
from eventsourcing.utils import get_topic

from vmledger.audit.chain import (
    CHAIN_TABLE,
    REQUESTS_TABLE,
    AuditKey,
    ChainRow,
    IndexRow,
    InTransaction,
    _links,
    _utc,
    _written,
    oid_text,
)

#: sqlite3's errors and the library's, in the order its transaction tests them
_SQLITE_ERRORS: tuple[tuple[type[sqlite3.Error], type[PersistenceError]], ...] = (
    (sqlite3.InterfaceError, InterfaceError), (sqlite3.DataError, DataError),
    (sqlite3.OperationalError, OperationalError), (sqlite3.IntegrityError, IntegrityError),
    (sqlite3.InternalError, InternalError), (sqlite3.ProgrammingError, ProgrammingError),
    (sqlite3.NotSupportedError, NotSupportedError), (sqlite3.DatabaseError, DatabaseError),
    (sqlite3.Error, PersistenceError))


def _persistence_error(error: sqlite3.Error) -> PersistenceError:
    """The library's error for a sqlite3 error, as its transactions raise them."""
    return next(ours for raw, ours in _SQLITE_ERRORS if isinstance(error, raw))(error)


def _sqlite_time(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 text, so that text order is time order."""
    return _utc(value).isoformat(timespec="microseconds")


def _from_sqlite_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


#: rows written by one INSERT statement (events, chain links, request index rows): a
#: command's events in one statement per table, not one per event; 500 rows of 5
#: values stay far below SQLite's 32,766 parameters
ROWS_PER_INSERT = 500

#: prepared statements each SQLite connection keeps (sqlite3's default is 128)
STATEMENT_CACHE = 256


class StatementCachingPool(SQLiteConnectionPool):
    """The library's SQLite connection pool, its connections keeping their prepared
    statements. The library opens them with ``cached_statements=True``, which sqlite3
    reads as a cache of *one* statement: every other statement of a command was
    compiled again each time it ran (about a fifth of a command's CPU). Connections are
    otherwise opened as the library opens them."""

    def _create_connection(self) -> SQLiteConnection:
        try:
            c = sqlite3.connect(database=self.db_name, uri=True, check_same_thread=False,
                                isolation_level=None, cached_statements=STATEMENT_CACHE,
                                timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT)
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            cursor = c.cursor()
            cursor.execute("PRAGMA journal_mode;")
            if cursor.fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL;")
                self.journal_mode_was_changed_to_wal = True
            self.is_journal_mode_wal = True
        c.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=c, max_age=self.max_age)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # the queue every request for a connection joins: a plain lock instead of the
        # library's ``threading.Semaphore()`` (a semaphore of one, written in Python
        # over a condition: two of its calls per connection taken)
        self._get_semaphore = threading.Lock()  # type: ignore[assignment]

    def get_connection(self, timeout: float | None = None, *,
                       is_writer: bool | None = None) -> SQLiteConnection:
        """The library's ``get_connection`` for a database file: the same queue, the
        same single writer, the same pool and limits, taking the locks without waiting
        first and working out the time left only when it must wait. Readers are
        not counted: only a database in memory, whose readers and writers exclude each
        other, needs their count; it takes the library's way, as a pool that pings
        its connections does."""
        if self._mutually_exclusive_read_write or self.pre_ping:
            return super().get_connection(timeout, is_writer=is_writer)
        if self._closed:
            raise ConnectionPoolClosedError
        started = time.monotonic()
        wait = self.pool_timeout if timeout is None else timeout
        gate = self._get_semaphore
        if not gate.acquire(blocking=False) and not gate.acquire(timeout=wait):
            raise ConnectionUnavailableError(
                "Timed out waiting for connection pool semaphore")
        try:
            writer = self._writer_lock if is_writer is True else None
            if writer is not None:
                if not writer.acquire(blocking=False) and not writer.acquire(
                        timeout=max(0.0, wait + started - time.monotonic())):
                    raise ConnectionUnavailableError("Timed out waiting for return of writer")
                self._num_writers += 1
            try:
                with self._put_condition:
                    conn = self._pool.popleft() if self._pool else None
                    if conn is not None:
                        conn.in_use.acquire()
                        if conn.closed:  # closed by its age timer: the library's way
                            conn = None
                        else:
                            self._in_use[id(conn)] = conn
                    if conn is None:
                        conn = self._get_connection(
                            timeout=max(0.0, wait + started - time.monotonic()))
            except BaseException:
                if writer is not None:  # no connection: give the writer's turn back
                    self._num_writers -= 1
                    writer.release()
                raise
            conn.is_writer = is_writer
            return conn
        finally:
            gate.release()

    def put_connection(self, conn: SQLiteConnection) -> None:
        """The library's ``put_connection`` (see :meth:`get_connection`)."""
        if self._mutually_exclusive_read_write or self.pre_ping:
            super().put_connection(conn)
            return
        is_writer, conn.is_writer = conn.is_writer, None
        with self._put_condition:
            if self._closed:
                raise ConnectionPoolClosedError("Pool is closed")
            if self._in_use.pop(id(conn), None) is None:
                raise ConnectionNotFromPoolError("Connection not in use in this pool")
            if not conn.closed:
                if not conn.closing and len(self._pool) < self.pool_size:
                    self._pool.append(conn)
                else:
                    conn.close()
            conn.in_use.release()
            if is_writer is True:
                self._num_writers -= 1
                self._writer_lock.release()
            self._put_condition.notify()

    @classmethod
    def replacing(cls, pool: SQLiteConnectionPool) -> StatementCachingPool:
        """A pool with the settings of ``pool`` (which is closed)."""
        if isinstance(pool, cls):
            return pool
        new = cls(db_name=pool.db_name, lock_timeout=pool.lock_timeout,
                  pool_size=pool.pool_size, max_overflow=pool.max_overflow,
                  pool_timeout=pool.pool_timeout, max_age=pool.max_age,
                  pre_ping=pool.pre_ping)
        pool.close()
        return new


class AuditedSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    """The SQLite application recorder, writing the chain and the request index too.
    Its datastore's connections keep their prepared statements
    (:class:`StatementCachingPool`; the read models share the datastore)."""

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"
                 ) -> None:
        datastore.pool = StatementCachingPool.replacing(datastore.pool)
        self.audit_key = AuditKey.from_environment()
        self.in_transaction: list[InTransaction] = []
        self._previous_statements: dict[int, str] = {}
        self._rows_statements: dict[tuple[str, int, int, str], str] = {}
        super().__init__(datastore, events_table_name)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {CHAIN_TABLE} ("
            "notification_id INTEGER PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL, server_hash BLOB NOT NULL, "
            "global_hash BLOB NOT NULL, UNIQUE (originator_id, originator_version))",
            f"CREATE TABLE IF NOT EXISTS {REQUESTS_TABLE} ("
            "notification_id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, "
            "originator_id TEXT NOT NULL, originator_version INTEGER NOT NULL, "
            "event_time TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {REQUESTS_TABLE}_request_idx "
            f"ON {REQUESTS_TABLE} (request_id, notification_id)",
            f"CREATE INDEX IF NOT EXISTS {REQUESTS_TABLE}_time_idx "
            f"ON {REQUESTS_TABLE} (originator_id, event_time)",
        ]

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any
                      ) -> Sequence[int] | None:
        """The library's insert (one transaction on the pool's writer connection, its
        sqlite3 errors raised as the library's), with the connection and cursor handled
        here: the library's four nested context managers (with those of the read in
        :meth:`select_events`) were about 5 % of a command's instructions."""
        pool = self.datastore.pool
        conn = pool.get_connection(is_writer=True)
        try:
            cursor = conn.cursor()
            try:
                cursor.execute("BEGIN")
                try:
                    ids = self._insert_events(cursor, stored_events, **kwargs)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
                return ids
            except sqlite3.Error as error:
                raise _persistence_error(error) from error
            finally:
                cursor.sqlite_cursor.close()
        finally:
            pool.put_connection(conn)

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return []
        ids = self._insert_stored(c, stored_events)
        # after the insert: this transaction holds SQLite's write lock. The chain's
        # head and each aggregate's last link, in one statement.
        oids = list(dict.fromkeys(oid_text(e.originator_id) for e in stored_events))
        c.execute(self._previous_statement(len(oids)), oids)
        head: tuple[int, bytes] | None = None
        previous: dict[str, bytes] = {}
        for kind, oid, nid, digest in c.fetchall():
            if kind == "g":
                head = (int(nid), bytes(digest))
            else:
                previous[str(oid)] = bytes(digest)
        links = _links(self.audit_key.secret, stored_events, ids, head, previous)
        self._insert_rows(c, CHAIN_TABLE, 5, [
            (x.notification_id, x.originator_id, x.version, x.server_hash, x.global_hash)
            for x in links])
        indexed = [(x.notification_id, x.indexed[0], x.originator_id, x.version,
                    _sqlite_time(x.indexed[1])) for x in links if x.indexed is not None]
        if indexed:
            self._insert_rows(c, REQUESTS_TABLE, 5, indexed)
        if self.in_transaction:
            rows = _written(stored_events, ids)
            for callback in self.in_transaction:
                callback(c, rows)
        return ids

    def _insert_stored(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent]
                       ) -> list[int]:
        """The events in one statement per :data:`ROWS_PER_INSERT` (the library runs
        one per event), and their notification ids (rowids), in the events' order."""
        ids: dict[tuple[str, int], int] = {}
        for start in range(0, len(stored_events), ROWS_PER_INSERT):
            chunk = stored_events[start:start + ROWS_PER_INSERT]
            values: list[Any] = []
            for e in chunk:
                oid = e.originator_id
                values += (oid.hex if isinstance(oid, UUID) else oid, e.originator_version,
                           e.topic, e.state)
            c.execute(self._rows_statement(self.events_table_name, 4, len(chunk),
                                           " RETURNING rowid, originator_id, "
                                           "originator_version"), values)
            # (RETURNING gives its rows in no promised order: matched by key)
            for rowid, stored_oid, version in c.fetchall():
                ids[(stored_oid, version)] = rowid
        return [ids[(e.originator_id.hex if isinstance(e.originator_id, UUID)
                     else e.originator_id, e.originator_version)] for e in stored_events]

    def _insert_rows(self, c: SQLiteCursor, table: str, width: int,
                     rows: Sequence[Sequence[Any]]) -> None:
        """``rows`` into ``table`` in one statement per :data:`ROWS_PER_INSERT`."""
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start:start + ROWS_PER_INSERT]
            c.execute(self._rows_statement(table, width, len(chunk)),
                      [value for row in chunk for value in row])

    def _rows_statement(self, table: str, width: int, count: int, tail: str = "") -> str:
        """``INSERT INTO table VALUES (?,...),...`` for ``count`` rows (made once)."""
        key = (table, width, count, tail)
        found = self._rows_statements.get(key)
        if found is None:
            row = "(" + ",".join("?" * width) + ")"
            found = f"INSERT INTO {table} VALUES " + ",".join([row] * count) + tail
            self._rows_statements[key] = found
        return found

    def _previous_statement(self, originators: int) -> str:
        """The chain's head (kind ``g``) and the last link of each of ``originators``
        aggregates (kind ``s``, by id): index scans, one statement (made once per
        count)."""
        found = self._previous_statements.get(originators)
        if found is None:
            head = (f"SELECT * FROM (SELECT 'g', NULL, notification_id, global_hash "
                    f"FROM {CHAIN_TABLE} ORDER BY notification_id DESC LIMIT 1)")
            last = (f"SELECT * FROM (SELECT 's', originator_id, notification_id, "
                    f"server_hash FROM {CHAIN_TABLE} WHERE originator_id=? "
                    "ORDER BY originator_version DESC LIMIT 1)")
            found = " UNION ALL ".join([head, *[last] * originators])
            self._previous_statements[originators] = found
        return found

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False, limit: int | None = None
                      ) -> list[StoredEvent]:
        """The library's query, run as one statement outside an explicit transaction: a
        single SELECT reads one consistent snapshot on its own, so the BEGIN and
        ROLLBACK the library wraps it in (two more statements on every load) add
        nothing."""
        statement = self.select_events_statement
        params: list[Any] = [
            originator_id.hex if isinstance(originator_id, UUID) else originator_id]
        if gt is not None:
            statement += "AND originator_version>? "
            params.append(gt)
        if lte is not None:
            statement += "AND originator_version<=? "
            params.append(lte)
        statement += "ORDER BY originator_version " + ("DESC " if desc else "ASC ")
        if limit is not None:
            statement += "LIMIT ? "
            params.append(limit)
        # every row has the id asked for: the caller's UUID, not one parsed per row
        same = (isinstance(originator_id, UUID)
                and self.datastore.originator_id_type == "uuid")
        convert = self.convert_originator_id
        pool = self.datastore.pool
        conn = pool.get_connection(is_writer=False)
        try:
            c = conn.cursor().sqlite_cursor
            try:
                c.execute(statement, params)
                return [StoredEvent(
                    originator_id=originator_id if same else convert(row["originator_id"]),
                    originator_version=row["originator_version"], topic=row["topic"],
                    state=row["state"]) for row in c.fetchall()]
            finally:
                c.close()
        except sqlite3.Error as error:  # as the library's transaction reports them
            raise _persistence_error(error) from error
        finally:
            pool.put_connection(conn)

    # --- reading ---------------------------------------------------------------------
    def _rows(self, statement: str, params: Sequence[Any]) -> list[Any]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, list(params))
            return list(c.fetchall())

    def select_chain(self, gt: int, limit: int) -> list[ChainRow]:
        rows = self._rows(
            f"SELECT c.notification_id, c.originator_id, c.originator_version, "
            f"c.server_hash, c.global_hash, r.request_id, r.originator_id AS r_oid, "
            f"r.originator_version AS r_version, r.event_time "
            f"FROM {CHAIN_TABLE} c LEFT JOIN {REQUESTS_TABLE} r "
            f"ON r.notification_id = c.notification_id "
            f"WHERE c.notification_id > ? ORDER BY c.notification_id LIMIT ?", (gt, limit))
        return [ChainRow(
            int(r[0]), str(r[1]), int(r[2]), bytes(r[3]), bytes(r[4]), r[5],
            None if r[6] is None else str(r[6]), r[7],
            None if r[8] is None else _from_sqlite_time(r[8])) for r in rows]

    def max_chain_id(self) -> int | None:
        rows = self._rows(f"SELECT MAX(notification_id) FROM {CHAIN_TABLE}", ())
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def orphan_index_rows(self) -> list[IndexRow]:
        rows = self._rows(
            f"SELECT r.* FROM {REQUESTS_TABLE} r WHERE NOT EXISTS (SELECT 1 FROM "
            f"{CHAIN_TABLE} c WHERE c.notification_id = r.notification_id) "
            "ORDER BY r.notification_id LIMIT 1000", ())
        return [self._index_row(r) for r in rows]

    @staticmethod
    def _index_row(r: Any) -> IndexRow:
        return IndexRow(int(r["notification_id"]), str(r["request_id"]),
                        str(r["originator_id"]), int(r["originator_version"]),
                        _from_sqlite_time(r["event_time"]))

    def chain_positions(self, originator_id: UUID | str, low: int, high: int
                        ) -> dict[int, int]:
        rows = self._rows(
            f"SELECT originator_version, notification_id FROM {CHAIN_TABLE} "
            "WHERE originator_id=? AND originator_version BETWEEN ? AND ?",
            (oid_text(originator_id), low, high))
        return {int(r[0]): int(r[1]) for r in rows}

    def request_rows(self, request_id: str) -> list[IndexRow]:
        rows = self._rows(f"SELECT * FROM {REQUESTS_TABLE} WHERE request_id=? "
                          "ORDER BY notification_id", (request_id,))
        return [self._index_row(r) for r in rows]

    def version_at(self, originator_id: UUID | str, at: datetime) -> int | None:
        rows = self._rows(f"SELECT MAX(originator_version) FROM {REQUESTS_TABLE} "
                          "WHERE originator_id=? AND event_time<=?",
                          (oid_text(originator_id), _sqlite_time(at)))
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def indexed_versions(self, originator_id: UUID | str) -> int:
        rows = self._rows(f"SELECT COUNT(*) FROM {REQUESTS_TABLE} WHERE originator_id=?",
                          (oid_text(originator_id),))
        return int(rows[0][0])


#: the eventsourcing topic for ``APPLICATION_RECORDER_TOPIC``
SQLITE_RECORDER_TOPIC = get_topic(AuditedSQLiteApplicationRecorder)
