"""The application recorders of both backends, extended to write the tamper-evidence
chain (:mod:`vmledger.audit.chain`) and the request index in the same transaction as the
events, and to run the read models' fold there too (``in_transaction``). Selected with
the library's ``APPLICATION_RECORDER_TOPIC`` (see :mod:`vmledger.persistence`)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
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
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
)
from eventsourcing.utils import get_topic, retry
from psycopg import Connection, Cursor, Pipeline
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

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
from vmledger.projections.store import execute_uncached

# --------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------

#: sqlite3's errors and the library's, in the order its transaction tests them
_SQLITE_ERRORS: tuple[tuple[type[sqlite3.Error], type[PersistenceError]], ...] = (
    (sqlite3.InterfaceError, InterfaceError), (sqlite3.DataError, DataError),
    (sqlite3.OperationalError, OperationalError), (sqlite3.IntegrityError, IntegrityError),
    (sqlite3.InternalError, InternalError), (sqlite3.ProgrammingError, ProgrammingError),
    (sqlite3.NotSupportedError, NotSupportedError), (sqlite3.DatabaseError, DatabaseError),
    (sqlite3.Error, PersistenceError))


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
        try:
            with self.datastore.get_connection(commit=False) as conn, conn.cursor() as c:
                c.execute(statement, params)
                return [StoredEvent(
                    originator_id=originator_id if same else convert(row["originator_id"]),
                    originator_version=row["originator_version"], topic=row["topic"],
                    state=row["state"]) for row in c.fetchall()]
        except sqlite3.Error as error:  # as the library's transaction reports them
            raise next(ours for raw, ours in _SQLITE_ERRORS if isinstance(error, raw)
                       )(error) from error

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


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------

#: at most this many commands are written in one group (one transaction)
GROUP_LIMIT = 64


#: at most this many links in one statement (PostgreSQL takes up to 65,535 parameters)
LINKS_PER_STATEMENT = 1000

#: the write's transaction control, as statements queued in its pipeline
_BEGIN, _COMMIT, _ROLLBACK = b"BEGIN", b"COMMIT", b"ROLLBACK"


def _rendered(statement: object) -> bytes:
    """A statement of the library's as the bytes psycopg sends."""
    if isinstance(statement, bytes):
        return statement
    if isinstance(statement, str):
        return statement.encode()
    if isinstance(statement, SQL | Composed):
        return statement.as_bytes()
    raise TypeError(f"not a statement: {statement!r}")


def _roll_back(conn: Connection[DictRow]) -> None:
    """End a failed write's transaction if it is still open, so that the connection
    goes back to the pool idle (a broken connection is discarded by the pool)."""
    if conn.info.transaction_status in (TransactionStatus.INTRANS,
                                        TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            conn.rollback()


class _Pending:
    """One command's events waiting to be written with a group, and the outcome."""

    __slots__ = ("error", "events", "finished", "ids")

    def __init__(self, events: Sequence[StoredEvent]) -> None:
        self.events = events
        self.ids: Sequence[int] = ()
        self.error: BaseException | None = None
        self.finished = False

    def done(self, ids: Sequence[int]) -> None:
        self.ids, self.finished = ids, True

    def fail(self, error: BaseException) -> None:
        self.error, self.finished = error, True

    def result(self) -> Sequence[int]:
        if self.error is not None:
            raise self.error
        return self.ids


class _Group:
    """The commands of this process waiting to be written, and whether a group is being
    written now (by one of the waiting threads)."""

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self.queue: list[_Pending] = []
        self.busy = False


class AuditedPostgresApplicationRecorder(PostgresApplicationRecorder):
    """The PostgreSQL application recorder, writing the chain and the request index too.

    The chain's head is read right after the ``EXCLUSIVE`` table lock is taken (in the
    same pipeline, so without an extra round trip); the links are computed once the
    insert has returned its notification ids, and written in the same transaction.
    """

    def __init__(self, datastore: PostgresDatastore, *,
                 events_table_name: str = "stored_events") -> None:
        if datastore.enable_db_functions:
            raise ValueError("the audit chain needs the table-locking insert: do not set "
                             "POSTGRES_ENABLE_DB_FUNCTIONS")
        self.audit_key = AuditKey.from_environment()
        self.in_transaction: list[InTransaction] = []
        self._group = _Group()
        #: called after a group's transaction committed, in the thread that wrote it
        #: (the one that ran the ``in_transaction`` callbacks)
        self.after_commit: list[Callable[[], None]] = []
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(datastore.schema)
        id_type = Identifier(datastore.originator_id_type)
        chain, requests = Identifier(CHAIN_TABLE), Identifier(REQUESTS_TABLE)
        fmt = {"schema": schema, "chain": chain, "requests": requests, "id_type": id_type}
        self.sql_create_statements += [
            SQL("CREATE TABLE IF NOT EXISTS {schema}.{chain} ("
                "notification_id bigint PRIMARY KEY, originator_id {id_type} NOT NULL, "
                "originator_version bigint NOT NULL, server_hash bytea NOT NULL, "
                "global_hash bytea NOT NULL, UNIQUE (originator_id, originator_version))"
                ).format(**fmt),
            SQL("CREATE TABLE IF NOT EXISTS {schema}.{requests} ("
                "notification_id bigint PRIMARY KEY, request_id text NOT NULL, "
                "originator_id {id_type} NOT NULL, originator_version bigint NOT NULL, "
                "event_time timestamptz NOT NULL)").format(**fmt),
            SQL("CREATE INDEX IF NOT EXISTS {index} ON {schema}.{requests} "
                "(request_id, notification_id)").format(
                    index=Identifier(f"{REQUESTS_TABLE}_request_idx"), **fmt),
            SQL("CREATE INDEX IF NOT EXISTS {index} ON {schema}.{requests} "
                "(originator_id, event_time)").format(
                    index=Identifier(f"{REQUESTS_TABLE}_time_idx"), **fmt),
        ]
        # the chain's head and each aggregate's last link: index scans, one round trip
        self._sql_previous: Composed = SQL(
            "(SELECT 'g' AS kind, NULL::text AS originator_id, notification_id, "
            "global_hash AS hash FROM {schema}.{chain} ORDER BY notification_id DESC "
            "LIMIT 1) UNION ALL (SELECT 's', o::text, c.notification_id, c.server_hash "
            "FROM unnest(%s::{id_type}[]) AS o CROSS JOIN LATERAL (SELECT notification_id, "
            "server_hash FROM {schema}.{chain} WHERE originator_id = o "
            "ORDER BY originator_version DESC LIMIT 1) AS c)"
        ).format(**fmt)
        self._sql_insert_chain: Composed = SQL(
            "INSERT INTO {schema}.{chain} (notification_id, originator_id, "
            "originator_version, server_hash, global_hash) VALUES ").format(**fmt)
        self._sql_insert_requests: Composed = SQL(
            "INSERT INTO {schema}.{requests} (notification_id, request_id, originator_id, "
            "originator_version, event_time) VALUES ").format(**fmt)
        #: per (links, request rows): the statement writing them (:meth:`_links_statement`)
        self._links_statements: dict[tuple[int, int], bytes] = {}
        # the write's statements as bytes: psycopg renders a composed statement again
        # on every execution
        self._lock_bytes = [_rendered(s) for s in self.lock_table_statements]
        self._notify_bytes = SQL("NOTIFY {0}").format(Identifier(self.channel_name)).as_bytes()
        self._previous_bytes = self._sql_previous.as_bytes()
        self._insert_bytes = self.insert_events_statement.as_bytes()
        self._sql_select_chain: Composed = SQL(
            "SELECT c.notification_id, c.originator_id::text AS originator_id, "
            "c.originator_version, c.server_hash, c.global_hash, r.request_id, "
            "r.originator_id::text AS r_oid, r.originator_version AS r_version, "
            "r.event_time FROM {schema}.{chain} c LEFT JOIN {schema}.{requests} r "
            "ON r.notification_id = c.notification_id WHERE c.notification_id > %s "
            "ORDER BY c.notification_id LIMIT %s").format(**fmt)
        self._sql_orphans: Composed = SQL(
            "SELECT r.notification_id, r.request_id, r.originator_id::text AS originator_id,"
            " r.originator_version, r.event_time FROM {schema}.{requests} r WHERE NOT EXISTS"
            " (SELECT 1 FROM {schema}.{chain} c WHERE c.notification_id = r.notification_id)"
            " ORDER BY r.notification_id LIMIT 1000").format(**fmt)
        self._sql_positions: Composed = SQL(
            "SELECT originator_version, notification_id FROM {schema}.{chain} "
            "WHERE originator_id = %s AND originator_version BETWEEN %s AND %s").format(**fmt)
        self._sql_request_rows: Composed = SQL(
            "SELECT notification_id, request_id, originator_id::text AS originator_id, "
            "originator_version, event_time FROM {schema}.{requests} WHERE request_id = %s "
            "ORDER BY notification_id").format(**fmt)
        self._sql_version_at: Composed = SQL(
            "SELECT MAX(originator_version) AS v FROM {schema}.{requests} "
            "WHERE originator_id = %s AND event_time <= %s").format(**fmt)
        self._sql_taken: Composed = SQL(
            "SELECT e.originator_id::text AS originator_id, e.originator_version "
            "FROM unnest(%s::{id_type}[], %s::bigint[]) AS k (oid, version) "
            "JOIN {schema}.{events} e ON e.originator_id = k.oid "
            "AND e.originator_version = k.version").format(
                events=Identifier(events_table_name), **fmt)
        self._sql_max_chain: Composed = SQL(
            "SELECT MAX(notification_id) AS m FROM {schema}.{chain}").format(**fmt)
        self._sql_indexed: Composed = SQL(
            "SELECT COUNT(*) AS n FROM {schema}.{requests} WHERE originator_id = %s"
        ).format(**fmt)

    # --- group commit ------------------------------------------------------------------
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any
                      ) -> Sequence[int] | None:
        """The library's insert, shared by the commands of this process that save at the
        same moment: one transaction, one table lock and one WAL flush for all of them
        (group commit). A command arriving while a group is being written waits for it
        and goes in the next; alone, a command is written at once, as before.

        Every command of a group gets its own notification ids and the events keep the
        library's guarantee (commit order = notification id order, under the table
        lock), the chain is linked over the group in id order, and the read models'
        fold (``in_transaction``) runs once over the group's rows. A group that fails
        on a unique key (a command that lost a race) is written again command by
        command, so only the loser gets the ``IntegrityError``."""
        if not stored_events:
            return None
        if any(v is not None for v in kwargs.values()):
            # a tracking record: an application recorder does not write it (as the
            # library's); the events are written alone
            return self._insert_once(stored_events)
        request = _Pending(stored_events)
        group = self._group
        with group.ready:
            group.queue.append(request)
        while True:  # until a group (this thread's or another's) wrote the request
            with group.ready:
                while group.busy and not request.finished:
                    group.ready.wait()
                if request.finished:
                    return request.result()
                group.busy = True
                batch = group.queue[:GROUP_LIMIT]
                del group.queue[:GROUP_LIMIT]
            try:
                self._write_group(batch)
            finally:
                with group.ready:
                    group.busy = False
                    group.ready.notify_all()

    def _write_group(self, batch: list[_Pending], *, retried: bool = False) -> None:
        """Write ``batch`` in one transaction. When it fails on a unique key, the
        commands that lost their race (a version already in the log, or taken by an
        earlier command of the group) are refused and the others written again as a
        group; should that fail too, each alone. Every waiting command is told its
        outcome, whatever happens."""
        events = [e for pending in batch for e in pending.events]
        try:
            ids = list(self._insert_once(events) or ())
        except IntegrityError as error:
            if len(batch) == 1:
                batch[0].fail(error)
                return
            if retried:
                for pending in batch:
                    self._write_group([pending], retried=True)
                return
            taken = self._taken(events)
            rest: list[_Pending] = []
            for pending in batch:
                keys = [(oid_text(e.originator_id), e.originator_version)
                        for e in pending.events]
                if any(key in taken for key in keys):
                    pending.fail(IntegrityError(f"{error} (lost a race in a group)"))
                else:
                    taken.update(keys)
                    rest.append(pending)
            if rest:
                self._write_group(rest, retried=True)
            return
        except BaseException as error:
            for pending in batch:
                pending.fail(error)
            raise
        for callback in self.after_commit:
            callback()
        start = 0
        for pending in batch:
            pending.done(ids[start:start + len(pending.events)])
            start += len(pending.events)

    def _taken(self, events: Sequence[StoredEvent]) -> set[tuple[str, int]]:
        """Which of the events' (originator id, version) keys the log already has."""
        oids = [self._db_oid(e.originator_id) for e in events]
        versions = [e.originator_version for e in events]
        return {(oid_text(r["originator_id"]), int(r["originator_version"]))
                for r in self._rows(self._sql_taken, (oids, versions))}

    def _insert_once(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        """Write ``stored_events`` in one transaction, in two round trips (no retry
        here: the group's caller retries on connection errors).

        The transaction is begun and committed by statements queued in one pipeline
        on the pool's autocommit connection (psycopg's ``transaction()`` would send its
        ``BEGIN`` and its ``COMMIT`` each with a sync of its own, and leaving the
        pipeline a third): ``BEGIN``, the table lock, ``NOTIFY``, the read of the
        chain's previous links and the insert, then one sync (a unique violation is an
        ``IntegrityError`` here, and the insert's notification ids feed the links);
        then the links and the request index (one statement), the read models' fold
        and ``COMMIT``, synced by leaving the pipeline. The ids are returned only once
        the ``COMMIT`` is acknowledged; on any error the transaction is rolled back
        and the connection goes back to the pool idle."""
        with self.datastore.get_connection() as conn:
            try:
                return self._write(conn, stored_events)
            except BaseException:
                _roll_back(conn)
                raise

    def _write(self, conn: Connection[DictRow], stored_events: Sequence[StoredEvent]
               ) -> list[int]:
        failed: BaseException | None = None
        ids: list[int] = []
        curs = conn.cursor()
        try:
            with conn.pipeline() as pipeline:
                try:
                    ids = self._first_trip(pipeline, curs, stored_events)
                    # the second: queued here, synced by leaving the pipeline
                    if self.in_transaction:
                        written = _written(stored_events, ids)
                        for callback in self.in_transaction:
                            callback(curs, written)
                    execute_uncached(curs, _COMMIT)
                except BaseException as error:
                    failed = error
                    # queued, so that the pipeline's closing sync ends the transaction
                    with contextlib.suppress(psycopg.Error):
                        execute_uncached(curs, _ROLLBACK)
        except psycopg.Error:
            if failed is None:
                raise  # the commit (or a statement queued before it) failed
            # closing the pipeline failed after the write had: report the write's error
        if failed is not None:
            raise failed
        if curs.statusmessage != "COMMIT":
            # COMMIT in a transaction left failed (by a fold whose savepoint could not
            # be rolled back) answers ROLLBACK, without an error
            raise OperationalError(f"the write was rolled back ({curs.statusmessage})")
        return ids

    def _first_trip(self, pipeline: Pipeline, curs: Cursor[DictRow],
                    stored_events: Sequence[StoredEvent]) -> list[int]:
        """BEGIN, the library's table lock and NOTIFY, the chain's previous links and
        the insert, synced (the first round trip); then the links and the request
        index, queued for the second. Returns the insert's notification ids."""
        curs.execute(_BEGIN, prepare=True)
        self._lock_table(curs)
        self._notify_channel(curs)
        previous = curs.connection.cursor()
        oids = sorted({oid_text(e.originator_id) for e in stored_events})
        previous.execute(self._previous_bytes, ([self._db_oid(o) for o in oids],),
                         prepare=True)
        make = self.construct_pg_stored_event
        curs.execute(self._insert_bytes, ([
            make(e.originator_id, e.originator_version, e.topic, e.state)
            for e in stored_events],), prepare=True)
        pipeline.sync()  # a unique violation raises here
        ids = [row["notification_id"] for row in curs.fetchall()]
        if len(ids) != len(stored_events):
            raise ProgrammingError(
                f"got {len(ids)} notification ids for {len(stored_events)} events")
        # still in the insert's transaction, holding its EXCLUSIVE lock on the events
        head: tuple[int, bytes] | None = None
        last: dict[str, bytes] = {}
        for found in previous.fetchall():
            if found["kind"] == "g":
                head = (int(found["notification_id"]), bytes(found["hash"]))
            else:
                last[oid_text(found["originator_id"])] = bytes(found["hash"])
        previous.close()
        links = _links(self.audit_key.secret, stored_events, ids, head, last)
        # the links and the request index: one statement, its parameters scalars
        # (cheaper for psycopg to send than arrays, or than two executemany)
        for start in range(0, len(links), LINKS_PER_STATEMENT):
            params: list[Any] = []
            indexed: list[Any] = []
            part = links[start:start + LINKS_PER_STATEMENT]
            for x in part:
                oid = self._db_oid(x.originator_id)
                params += (x.notification_id, oid, x.version, x.server_hash, x.global_hash)
                if x.indexed is not None:
                    indexed += (x.notification_id, x.indexed[0], oid, x.version,
                                x.indexed[1])
            curs.execute(self._links_statement(len(part), len(indexed) // 5),
                         params + indexed, prepare=True)
        return ids

    def _links_statement(self, links: int, requests: int) -> bytes:
        """The statement inserting ``links`` chain rows and ``requests`` request-index
        rows (made once per count)."""
        found = self._links_statements.get((links, requests))
        if found is None:
            row = b"(%s, %s, %s, %s, %s)"
            found = self._sql_insert_chain.as_bytes() + b", ".join([row] * links)
            if requests:
                found = (b"WITH links AS (" + found + b") "
                         + self._sql_insert_requests.as_bytes()
                         + b", ".join([row] * requests))
            self._links_statements[(links, requests)] = found
        return found

    def _lock_table(self, curs: Cursor[DictRow]) -> None:
        for statement in self._lock_bytes:  # the library's, pre-rendered
            curs.execute(statement, prepare=True)

    def _notify_channel(self, curs: Cursor[DictRow]) -> None:
        curs.execute(self._notify_bytes, prepare=True)

    def _db_oid(self, originator_id: UUID | str) -> UUID | str:
        if self.datastore.originator_id_type == "uuid" and not isinstance(originator_id, UUID):
            return UUID(str(originator_id))
        return originator_id

    # --- reading ---------------------------------------------------------------------
    def _rows(self, statement: Composed, params: Sequence[Any]) -> list[DictRow]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, list(params), prepare=True)
            return list(curs.fetchall())

    def select_chain(self, gt: int, limit: int) -> list[ChainRow]:
        return [ChainRow(
            int(r["notification_id"]), str(r["originator_id"]), int(r["originator_version"]),
            bytes(r["server_hash"]), bytes(r["global_hash"]), r["request_id"], r["r_oid"],
            r["r_version"], None if r["event_time"] is None else _utc(r["event_time"]))
            for r in self._rows(self._sql_select_chain, (gt, limit))]

    @staticmethod
    def _index_row(r: DictRow) -> IndexRow:
        return IndexRow(int(r["notification_id"]), str(r["request_id"]),
                        str(r["originator_id"]), int(r["originator_version"]),
                        _utc(r["event_time"]))

    def orphan_index_rows(self) -> list[IndexRow]:
        return [self._index_row(r) for r in self._rows(self._sql_orphans, ())]

    def max_chain_id(self) -> int | None:
        rows = self._rows(self._sql_max_chain, ())
        return None if not rows or rows[0]["m"] is None else int(rows[0]["m"])

    def chain_positions(self, originator_id: UUID | str, low: int, high: int
                        ) -> dict[int, int]:
        rows = self._rows(self._sql_positions, (self._db_oid(originator_id), low, high))
        return {int(r["originator_version"]): int(r["notification_id"]) for r in rows}

    def request_rows(self, request_id: str) -> list[IndexRow]:
        return [self._index_row(r) for r in self._rows(self._sql_request_rows, (request_id,))]

    def version_at(self, originator_id: UUID | str, at: datetime) -> int | None:
        rows = self._rows(self._sql_version_at, (self._db_oid(originator_id), _utc(at)))
        return None if not rows or rows[0]["v"] is None else int(rows[0]["v"])

    def indexed_versions(self, originator_id: UUID | str) -> int:
        rows = self._rows(self._sql_indexed, (self._db_oid(originator_id),))
        return int(rows[0]["n"])


#: eventsourcing topics for ``APPLICATION_RECORDER_TOPIC``
SQLITE_RECORDER_TOPIC = get_topic(AuditedSQLiteApplicationRecorder)
POSTGRES_RECORDER_TOPIC = get_topic(AuditedPostgresApplicationRecorder)
