"""The PostgreSQL application recorder, extended to write the tamper-evidence chain
(:mod:`vmledger.audit.chain`) and the request index in the same transaction as the events,
and to run the read models' fold there too (``in_transaction``): one write's SQL, sent in
two round trips, and the reads of the chain and the request index. The commands of a
process that save at the same moment share one transaction (group commit, and the writes
again after a refusal: :mod:`vmledger.audit.group_commit`). Selected with the library's
``APPLICATION_RECORDER_TOPIC`` (see :mod:`vmledger.persistence`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.utils import get_topic, retry
from psycopg import Connection, Cursor, Pipeline
from psycopg.rows import DictRow, TupleRow, tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal

from vmledger.audit.chain import (
    CHAIN_TABLE,
    REQUESTS_TABLE,
    AuditKey,
    ChainRow,
    IndexRow,
    InTransaction,
    _links,
    _NewLink,
    _utc,
    _written,
    oid_text,
)
from vmledger.audit.group_commit import Dropped, GroupCommitRecorder
from vmledger.domain import wakeups
from vmledger.projections.pg_statements import execute_many_parameters, execute_uncached

#: at most this many events are inserted with their values as parameters of their own
#: (beyond: an array per column)
EVENTS_AS_SCALARS = 1000

#: at most this many links in one statement (PostgreSQL takes up to 65,535 parameters)
LINKS_PER_STATEMENT = 1000

#: the write's transaction control, as statements queued in its pipeline
_BEGIN, _COMMIT, _ROLLBACK = b"BEGIN", b"COMMIT", b"ROLLBACK"

#: the first phase of an ``in_transaction`` callback (the recorder's ``first_trip``):
#: called with the write's cursor and events once its insert is queued, it queues
#: statements whose answers come back with the insert's, in the write's first round
#: trip. Before it queues anything it adds to the list (its third argument) the
#: function told the first trip's error should it fail (an error raised while it
#: queues is one too): True when the error is that of its own statements, which ran
#: after the insert succeeded (its second phase, in ``in_transaction``, answers for it
#: inside the transaction), False otherwise (the write fails)
FirstTrip = Callable[[Cursor[TupleRow], Sequence[StoredEvent],
                      list[Callable[[BaseException], bool]]], None]


def _rendered(statement: object) -> bytes:
    """A statement of the library's as the bytes psycopg sends."""
    if isinstance(statement, bytes):
        return statement
    if isinstance(statement, str):
        return statement.encode()
    if isinstance(statement, SQL | Composed):
        return statement.as_bytes()
    raise TypeError(f"not a statement: {statement!r}")


class AuditedPostgresApplicationRecorder(GroupCommitRecorder):
    """The PostgreSQL application recorder, writing the chain and the request index too
    (its commands written in groups: :class:`~vmledger.audit.group_commit.GroupCommitRecorder`).

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
        #: the first phases of ``in_transaction`` callbacks, by callback, run in the
        #: write's first round trip (:data:`FirstTrip`) while the callback is in
        #: ``in_transaction`` (taking it out turns both phases off)
        self.first_trip: dict[InTransaction, FirstTrip] = {}
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
        #: per (links, request rows, with the NOTIFY): the statement writing them
        #: (:meth:`_links_statement`)
        self._links_statements: dict[tuple[int, int, bool], bytes] = {}
        # the write's statements as bytes: psycopg renders a composed statement again
        # on every execution. The library's ``SET LOCAL lock_timeout`` is a
        # ``set_config``; its ``NOTIFY`` goes with the links, after the fold (each
        # statement costs the client a send and a poll)
        self.notify = True  #: whether a write notifies the log's listeners
        #: the server processes of the connections this recorder notified with: the
        #: log's follower in this process tells its own writes' notifications by them
        #: (their commands woke this process's agent already). Those of connections
        #: since closed stay: should another process's connection be given one of
        #: their numbers, its notifications would wake this agent only at its next
        #: periodic pass
        self.own_backends: set[int] = set()
        settings = SQL("SELECT set_config('lock_timeout', {0}, true)").format(
            Literal(f"{int(self.datastore.lock_timeout)}s"))
        self._settings_bytes = settings.as_bytes()
        #: the write's NOTIFY, with the links (:meth:`_links_statement`): its payload
        #: names the hosts whose agent the write gave work and the read-model layouts
        #: it was folded into (:func:`vmledger.domain.wakeups.payload`)
        self._notify_bytes = SQL("SELECT pg_notify({0}, %s)").format(
            Literal(self.channel_name)).as_bytes()
        self._lock_bytes = [_rendered(s) for s in self.lock_table_statements
                            if "lock_timeout" not in _rendered(s).decode()]
        self._previous_bytes = self._sql_previous.as_bytes()
        self._insert_head = SQL(
            "WITH ins AS (INSERT INTO {schema}.{events} (originator_id, originator_version,"
            " topic, state) ").format(
                events=Identifier(events_table_name), **fmt).as_bytes()
        self._id_type = id_type.as_bytes()
        #: per number of events: the insert and the read of the chain's previous links
        #: (:meth:`_insert_statement`)
        self._insert_statements: dict[int, bytes] = {}
        #: per form of :meth:`select_events`'s query (gt, lte, desc, limit given): it
        self._select_statements: dict[tuple[bool, bool, bool, bool], bytes] = {}
        self._select_head = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{events}"
            " WHERE originator_id = %s").format(
                events=Identifier(events_table_name), **fmt).as_bytes()
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

    def _write(self, conn: Connection[DictRow], stored_events: Sequence[StoredEvent],
               agent_hosts: frozenset[str] | None, *, drop: bool = False) -> list[int]:
        """Write ``stored_events`` in one transaction on ``conn``, in two round trips
        (a group's write, see :mod:`vmledger.audit.group_commit`; ``drop``: without
        the :attr:`droppable` callbacks).

        The transaction is begun and committed by statements queued in one pipeline
        on the pool's autocommit connection (psycopg's ``transaction()`` would send its
        ``BEGIN`` and its ``COMMIT`` each with a sync of its own, and leaving the
        pipeline a third): ``BEGIN``, the lock timeout, the table lock, the read of
        the chain's previous links and the insert, and the read models' reads
        (:attr:`first_trip`: the fold's savepoint, its position and rows), then one
        sync (a unique violation is an ``IntegrityError`` here, and the insert's
        notification ids feed the links); then the read models' fold (its row writes
        and position, waiting for no read of its own), the links, the request index
        and the ``NOTIFY`` (one statement: its payload says what the fold did) and
        ``COMMIT``, synced by leaving the pipeline. The ids are returned only once
        the ``COMMIT`` is acknowledged; on any error a ``ROLLBACK`` is queued before
        leaving the pipeline. :class:`~vmledger.audit.group_commit.Dropped` when it was
        refused at its end after droppable callbacks ran."""
        failed: BaseException | None = None
        ids: list[int] = []
        callbacks = self.in_transaction
        if self.droppable:
            kept = [c for c in callbacks if c not in self.droppable]
            dropping, callbacks = (False, kept) if drop else (len(kept) < len(callbacks),
                                                              callbacks)
        else:
            dropping = False
        if self.notify:  # before the write: its notification may arrive before it returns
            self.own_backends.add(conn.info.backend_pid)
        curs = conn.cursor(row_factory=tuple_row)
        try:
            with conn.pipeline() as pipeline:
                try:
                    ids, links = self._first_trip(pipeline, curs, stored_events, callbacks)
                    # the second: queued here, synced by leaving the pipeline (the
                    # fold's reads sync on their own)
                    folded: list[str] = []
                    if callbacks:
                        written = _written(stored_events, ids)
                        for callback in callbacks:
                            into = callback(curs, written)
                            if into is not None:
                                folded.append(into)
                    # after the fold (outside its savepoint, whatever became of it):
                    # the links, the request index and the NOTIFY, one statement
                    self._write_links(curs, links, wakeups.payload(
                        agent_hosts, folded=frozenset(folded),
                        written={x.originator_id: x.version for x in links})
                        if self.notify else None)
                    execute_uncached(curs, _COMMIT)
                except BaseException as error:
                    failed = error
                    # queued, so that the pipeline's closing sync ends the transaction
                    with contextlib.suppress(psycopg.Error):
                        execute_uncached(curs, _ROLLBACK)
        except psycopg.Error as error:
            if failed is None:
                # the commit (or a statement queued before it) failed: after a droppable
                # callback's statements, written again without them (not when the
                # connection failed: the commit may have been made)
                if dropping and not isinstance(error, psycopg.OperationalError):
                    raise Dropped from error
                raise
            # closing the pipeline failed after the write had: report the write's error
        if failed is not None:
            raise failed
        if curs.statusmessage != "COMMIT":
            # COMMIT in a transaction left failed (by a fold whose savepoint could not
            # be rolled back) answers ROLLBACK, without an error
            refused = OperationalError(f"the write was rolled back ({curs.statusmessage})")
            if dropping:
                raise Dropped from refused
            raise refused
        return ids

    def _first_trip(self, pipeline: Pipeline, curs: Cursor[TupleRow],
                    stored_events: Sequence[StoredEvent],
                    callbacks: Sequence[InTransaction]
                    ) -> tuple[list[int], list[_NewLink]]:
        """BEGIN, the lock timeout, the library's table lock, then the insert with the
        read of the chain's previous links (one statement), and what the
        :attr:`first_trip` callbacks queue behind it, synced (the first round trip).
        Returns the insert's notification ids and the links to write."""
        curs.execute(_BEGIN, prepare=True)
        curs.execute(self._settings_bytes, prepare=True)
        self._lock_table(curs)
        oids = sorted({oid_text(e.originator_id) for e in stored_events})
        params: list[Any] = []
        db_oid = self._db_oid
        if len(stored_events) <= EVENTS_AS_SCALARS:
            for e in stored_events:
                params += (db_oid(e.originator_id), e.originator_version, e.topic, e.state)
        else:  # one array per column (PostgreSQL takes up to 65,535 parameters)
            params += ([db_oid(e.originator_id) for e in stored_events],
                       [e.originator_version for e in stored_events],
                       [e.topic for e in stored_events], [e.state for e in stored_events])
        params.append([db_oid(o) for o in oids])
        inserted = execute_many_parameters(curs, functools.partial(
            psycopg.RawCursor, curs.connection, row_factory=tuple_row),
            self._insert_statement(len(stored_events)), params)
        # the read models' reads, queued behind the insert: their answers come with its
        absorbers: list[Callable[[BaseException], bool]] = []
        failed: Exception | None = None
        if self.first_trip:
            try:
                for callback in callbacks:
                    queue = self.first_trip.get(callback)
                    if queue is not None:
                        queue(curs, stored_events, absorbers)
            except Exception as error:
                # (psycopg reads the answers that have arrived while it sends: this can
                # be an earlier statement's error, the insert's too) nothing more is
                # queued; the sync ends the batch, whose first error counts
                failed = error
        try:
            pipeline.sync()  # a unique violation raises here
        except psycopg.Error as error:
            failed = failed or error
        # a read queued after the insert failed (the insert did not): the callback that
        # queued it rolls back to its savepoint in the transaction
        if failed is not None and not any(absorb(failed) for absorb in absorbers):
            raise failed
        # the insert's ids first, in the order inserted (as the library's RETURNING);
        # then the chain's head and each aggregate's last link, read in the insert's
        # transaction after its EXCLUSIVE lock on the events was taken
        ids: list[int] = []
        head: tuple[int, bytes] | None = None
        last: dict[str, bytes] = {}
        for kind, oid, nid, found in inserted.fetchall():
            if kind == "i":
                ids.append(nid)
            elif kind == "g":
                head = (int(nid), bytes(found))
            else:
                last[oid_text(oid)] = bytes(found)
        if len(ids) != len(stored_events):
            raise ProgrammingError(
                f"got {len(ids)} notification ids for {len(stored_events)} events")
        return ids, _links(self.audit_key.secret, stored_events, ids, head, last)

    def _write_links(self, curs: Cursor[TupleRow], links: list[_NewLink],
                     notification: str | None) -> None:
        """Queue the links and the request index, with the NOTIFY's ``notification``
        (None: no NOTIFY): one statement, its parameters scalars (cheaper for psycopg
        to send than arrays, or than two executemany); more beyond
        :data:`LINKS_PER_STATEMENT` links, the NOTIFY with the last."""
        db_oid = self._db_oid
        for start in range(0, len(links), LINKS_PER_STATEMENT):
            params: list[Any] = []
            indexed: list[Any] = []
            part = links[start:start + LINKS_PER_STATEMENT]
            for x in part:
                oid = db_oid(x.originator_id)
                params += (x.notification_id, oid, x.version, x.server_hash, x.global_hash)
                if x.indexed is not None:
                    indexed += (x.notification_id, x.indexed[0], oid, x.version,
                                x.indexed[1])
            last_part = start + LINKS_PER_STATEMENT >= len(links)
            notify = notification is not None and last_part
            execute_many_parameters(
                curs, functools.partial(psycopg.RawCursor, curs.connection),
                self._links_statement(len(part), len(indexed) // 5, notify),
                params + indexed + ([notification] if notify else []))

    def _insert_statement(self, events: int) -> bytes:
        """The statement inserting ``events`` events (their values as scalars: cheaper
        for psycopg to send than the library's array of a composite type; beyond
        :data:`EVENTS_AS_SCALARS`, an array per column) and reading
        the chain's previous links after it: rows ``('i', NULL, notification id,
        NULL)`` per event, in the order inserted, then those of the chain's head and
        of each aggregate's last link (made once per count)."""
        found = self._insert_statements.get(events)
        if found is None:
            values = (b"VALUES " + b", ".join([b"(%s, %s, %s, %s)"] * events)
                      if events <= EVENTS_AS_SCALARS else
                      b"SELECT * FROM unnest(%s::" + self._id_type + b"[], %s::bigint[], "
                      b"%s::text[], %s::bytea[])")
            found = (
                self._insert_head + values + b" RETURNING notification_id) (SELECT 'i' AS "
                b"kind, NULL::text AS originator_id, notification_id, NULL::bytea AS hash "
                b"FROM ins) UNION ALL " + self._previous_bytes)
            if events <= EVENTS_AS_SCALARS:
                self._insert_statements[events] = found
        return found

    def _links_statement(self, links: int, requests: int, notify: bool) -> bytes:
        """The statement inserting ``links`` chain rows and ``requests`` request-index
        rows, then (``notify``) sending the NOTIFY whose payload is its last parameter
        (made once per shape)."""
        found = self._links_statements.get((links, requests, notify))
        if found is None:
            row = b"(%s, %s, %s, %s, %s)"
            parts = [self._sql_insert_chain.as_bytes() + b", ".join([row] * links)]
            if requests:
                parts.append(self._sql_insert_requests.as_bytes()
                             + b", ".join([row] * requests))
            if notify:
                parts.append(self._notify_bytes)
            # data-modifying parts in a WITH run whether or not the last part reads them
            found = parts[-1] if len(parts) == 1 else (
                b"WITH " + b", ".join(b"w%d AS (%s)" % (i, part)
                                      for i, part in enumerate(parts[:-1]))
                + b" " + parts[-1])
            self._links_statements[(links, requests, notify)] = found
        return found

    def _lock_table(self, curs: Cursor[Any]) -> None:
        for statement in self._lock_bytes:  # the library's, pre-rendered
            curs.execute(statement, prepare=True)


    def _db_oid(self, originator_id: UUID | str) -> UUID | str:
        if self.datastore.originator_id_type == "uuid" and not isinstance(originator_id, UUID):
            return UUID(str(originator_id))
        return originator_id

    # --- reading ---------------------------------------------------------------------
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False, limit: int | None = None
                      ) -> Sequence[StoredEvent]:
        """The library's query (every command's load), its text made once per form
        rather than composed and rendered again on every call, its rows tuples."""
        form = (gt is not None, lte is not None, desc, limit is not None)
        statement = self._select_statements.get(form)
        if statement is None:
            statement = self._select_head
            if gt is not None:
                statement += b" AND originator_version > %s"
            if lte is not None:
                statement += b" AND originator_version <= %s"
            statement += b" ORDER BY originator_version " + (b"DESC" if desc else b"ASC")
            if limit is not None:
                statement += b" LIMIT %s"
            self._select_statements[form] = statement
        params: list[Any] = [originator_id]
        for value in (gt, lte, limit):
            if value is not None:
                params.append(value)
        with self.datastore.get_connection() as conn, \
                conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, params, prepare=True)
            return [StoredEvent(originator_id=oid, originator_version=version, topic=topic,
                                state=bytes(state))
                    for oid, version, topic, state in curs.fetchall()]

    def _rows(self, statement: Composed, params: Sequence[Any]) -> list[DictRow]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, list(params), prepare=True)
            return list(curs.fetchall())

    def _taken(self, events: Sequence[StoredEvent]) -> set[tuple[str, int]]:
        """Which of the events' (originator id, version) keys the log already has."""
        oids = [self._db_oid(e.originator_id) for e in events]
        versions = [e.originator_version for e in events]
        return {(oid_text(r["originator_id"]), int(r["originator_version"]))
                for r in self._rows(self._sql_taken, (oids, versions))}

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


#: the eventsourcing topic for ``APPLICATION_RECORDER_TOPIC``
POSTGRES_RECORDER_TOPIC = get_topic(AuditedPostgresApplicationRecorder)
