"""Tamper evidence: every stored event is chained to its predecessor by an HMAC.

Two chains are written by the application recorders below, **in the same database
transaction as the events themselves** (so an event is never stored without its link,
nor a link without its event):

* the **server chain** links each event of one aggregate (a server, or an idempotency
  record) to the previous version of the same aggregate;
* the **global chain** links each event to the previous event of the whole log, in
  notification-id order.

Each link is ``HMAC-SHA256(key, domain ‖ canonical(event) ‖ previous hash)`` where
``canonical(event)`` is the length-prefixed encoding of (notification id, originator
id, originator version, topic, state bytes). The links are stored in the table
``vmledger_chain``. Beside it, ``vmledger_requests`` indexes every event that carries a
``request_id`` by request id and by (server, event time), so a causal chain or an
"as of" lookup does not scan the log.

Serial order of the global chain: on PostgreSQL the event insert already takes an
``EXCLUSIVE`` lock on the events table and holds it until commit, and the chain's head
is read under that lock (queued in the same pipeline right after it); on SQLite it is
read after the insert, which holds the database's single write lock. So the head read
by one transaction is always the head written by the previous one.

Both recorders also run their ``in_transaction`` callbacks (:data:`InTransaction`) inside
the same transaction, after the links are written, with the new rows: this is how the
process's own read models are folded in the command's transaction (see
:meth:`vmledger.projections.runner.ViewUpdater.attach`).

The key is read from the environment variable ``VMLEDGER_AUDIT_KEY``. Without it a
fixed, public development key is used, and :func:`vmledger.audit.verify.verify` says
so: a chain made with a public key only detects accidents and careless edits, not an
attacker who can write to the database (they can recompute every link).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

__all__ = [
    "CHAIN_TABLE",
    "DEVELOPMENT_KEY",
    "GENESIS",
    "KEY_ENV",
    "POSTGRES_RECORDER_TOPIC",
    "REQUESTS_TABLE",
    "SQLITE_RECORDER_TOPIC",
    "AuditKey",
    "AuditedPostgresApplicationRecorder",
    "AuditedRecorder",
    "AuditedSQLiteApplicationRecorder",
    "ChainError",
    "ChainRow",
    "InTransaction",
    "IndexRow",
    "WrittenRow",
    "canonical",
    "global_link",
    "oid_text",
    "request_fields",
    "server_link",
]

#: the environment variable holding the secret HMAC key
KEY_ENV = "VMLEDGER_AUDIT_KEY"
#: the environment variable naming a file that holds it (when ``KEY_ENV`` is unset)
KEY_FILE_ENV = "VMLEDGER_AUDIT_KEY_FILE"
#: used when ``VMLEDGER_AUDIT_KEY`` is unset: public, so it proves nothing to an attacker
DEVELOPMENT_KEY = b"vmledger-development-audit-key/not-a-secret/set-VMLEDGER_AUDIT_KEY"
#: the "previous hash" of the first link of every chain
GENESIS = bytes(32)
CHAIN_TABLE = "vmledger_chain"
REQUESTS_TABLE = "vmledger_requests"

_SERVER_DOMAIN = b"vmledger/chain/v1/server\x00"
_GLOBAL_DOMAIN = b"vmledger/chain/v1/global\x00"


class ChainError(RuntimeError):
    """The chain cannot be extended: the stored log was changed behind vmledger's back.

    Raised inside the insert transaction (which is then rolled back) when the chain's
    head is at or beyond the notification id just issued — which only happens when
    events were deleted from the end of a SQLite log and their ids issued again.
    """


#: a stored event as the insert wrote it: (notification id, originator id, originator
#: version, topic, state), the form the read models' updater reads the log in
WrittenRow = tuple[int, Any, int, str, bytes]
#: called inside the insert's transaction with its cursor and the new rows (in
#: notification-id order); an exception rolls the whole insert back
InTransaction = Callable[[Any, list[WrittenRow]], None]


def _written(events: Sequence[StoredEvent], ids: Sequence[int]) -> list[WrittenRow]:
    return sorted(((nid, e.originator_id, e.originator_version, e.topic, e.state)
                   for nid, e in zip(ids, events, strict=True)), key=lambda row: row[0])


@dataclass(frozen=True)
class AuditKey:
    """The HMAC key and where it came from (``environment``, ``development``, ``explicit``)."""

    secret: bytes
    source: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> AuditKey:
        """``VMLEDGER_AUDIT_KEY``, else the first line of the file
        ``VMLEDGER_AUDIT_KEY_FILE`` names (so the key itself is in no process's
        environment), else the development key."""
        env = os.environ if environ is None else environ
        value = env.get(KEY_ENV, "")
        if value:
            return cls(value.encode("utf-8"), "environment")
        path = env.get(KEY_FILE_ENV, "")
        if path:
            with open(path, encoding="utf-8") as f:
                secret = f.readline().rstrip("\r\n")
            if not secret:
                raise ValueError(f"the audit key file {path} is empty")
            return cls(secret.encode("utf-8"), "file")
        return cls(DEVELOPMENT_KEY, "development")

    @classmethod
    def explicit(cls, secret: bytes | str) -> AuditKey:
        return cls(secret.encode("utf-8") if isinstance(secret, str) else secret, "explicit")

    @property
    def is_development(self) -> bool:
        return hmac.compare_digest(self.secret, DEVELOPMENT_KEY)

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key (to tell keys apart without revealing them)."""
        return hmac.new(self.secret, b"vmledger/key-id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:  # never print the secret
        return f"AuditKey(source={self.source!r}, key_id={self.key_id!r})"


def oid_text(originator_id: UUID | str) -> str:
    """The canonical text of an originator id (a UUID in its hyphenated form)."""
    return str(originator_id)


def _as_bytes(state: object) -> bytes:
    # a row edited by hand may come back as text rather than a blob: still compare it
    if isinstance(state, str):
        return state.encode("utf-8")
    return bytes(state)  # type: ignore[call-overload,no-any-return]


def canonical(notification_id: int, originator_id: UUID | str, version: int, topic: str,
              state: bytes) -> bytes:
    """The unambiguous bytes of one stored event that a link covers: each field
    (decimal notification id, originator id text, decimal version, UTF-8 topic, state
    bytes) preceded by its length as 8 big-endian bytes."""
    parts = (str(int(notification_id)).encode(), oid_text(originator_id).encode(),
             str(int(version)).encode(), topic.encode("utf-8"), _as_bytes(state))
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def server_link(key: bytes, event: bytes, previous: bytes) -> bytes:
    """The server-chain hash of a canonical event following ``previous``."""
    return hmac.digest(key, _SERVER_DOMAIN + event + previous, "sha256")


def global_link(key: bytes, event: bytes, previous: bytes) -> bytes:
    """The global-chain hash of a canonical event following ``previous``."""
    return hmac.digest(key, _GLOBAL_DOMAIN + event + previous, "sha256")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def request_fields(state: bytes) -> tuple[str, datetime] | None:
    """The ``request_id`` and timestamp of a stored event's state, if it has them.

    The state is the eventsourcing JSON transcoding (no compression or cipher is
    configured by vmledger); anything else is not indexed.
    """
    try:
        data = json.loads(_as_bytes(state))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    request_id = data.get("request_id")
    stamp = data.get("timestamp")
    if not isinstance(request_id, str) or not isinstance(stamp, dict):
        return None
    raw = stamp.get("_data_")
    if not isinstance(raw, str):
        return None
    try:
        return request_id, _utc(datetime.fromisoformat(raw))
    except ValueError:
        return None


@dataclass(frozen=True)
class ChainRow:
    """One stored link, joined with the request-index row of the same event (if any)."""

    notification_id: int
    originator_id: str
    originator_version: int
    server_hash: bytes
    global_hash: bytes
    request_id: str | None = None
    index_originator_id: str | None = None
    index_version: int | None = None
    event_time: datetime | None = None


@dataclass(frozen=True)
class IndexRow:
    """Where an event with a given request id is in the log."""

    notification_id: int
    request_id: str
    originator_id: str
    originator_version: int
    event_time: datetime


@runtime_checkable
class AuditedRecorder(Protocol):
    """What the audit readers need from an application recorder."""

    audit_key: AuditKey

    def select_chain(self, gt: int, limit: int) -> list[ChainRow]:
        """Links with notification id > ``gt``, in order, joined with the index."""
        ...

    def orphan_index_rows(self) -> list[IndexRow]:
        """Request-index rows with no chain row (forged or left behind)."""
        ...

    def max_chain_id(self) -> int | None:
        """The highest notification id in the chain (None: the chain is empty)."""
        ...

    def chain_positions(self, originator_id: UUID | str, low: int, high: int
                        ) -> dict[int, int]:
        """version → notification id for one aggregate's versions in [low, high]."""
        ...

    def request_rows(self, request_id: str) -> list[IndexRow]:
        """Every indexed event with this request id, in log order."""
        ...

    def version_at(self, originator_id: UUID | str, at: datetime) -> int | None:
        """The highest indexed version of an aggregate whose event time is <= ``at``."""
        ...

    def indexed_versions(self, originator_id: UUID | str) -> int:
        """How many events of the aggregate are in the request index."""
        ...


# --------------------------------------------------------------------------------------
# Computing the links of one insert
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _NewLink:
    notification_id: int
    originator_id: str
    version: int
    server_hash: bytes
    global_hash: bytes
    indexed: tuple[str, datetime] | None


def _links(key: bytes, events: Sequence[StoredEvent], ids: Sequence[int],
           head: tuple[int, bytes] | None, previous: dict[str, bytes]) -> list[_NewLink]:
    if len(ids) != len(events):
        raise ChainError(f"got {len(ids)} notification ids for {len(events)} events")
    if head is not None and ids and head[0] >= min(ids):
        raise ChainError(
            f"the audit chain's head (notification id {head[0]}) is not before the new "
            f"event's id {min(ids)}: events were removed from the log; run verify")
    global_prev = head[1] if head is not None else GENESIS
    server_prev = dict(previous)
    links: list[_NewLink] = []
    for nid, event in sorted(zip(ids, events, strict=True), key=lambda pair: pair[0]):
        oid = oid_text(event.originator_id)
        body = canonical(nid, oid, event.originator_version, event.topic, event.state)
        server_hash = server_link(key, body, server_prev.get(oid, GENESIS))
        global_hash = global_link(key, body, global_prev)
        server_prev[oid] = server_hash
        global_prev = global_hash
        links.append(_NewLink(nid, oid, event.originator_version, server_hash, global_hash,
                              request_fields(event.state)))
    return links


# --------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------

def _sqlite_time(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 text, so that text order is time order."""
    return _utc(value).isoformat(timespec="microseconds")


def _from_sqlite_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class AuditedSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    """The SQLite application recorder, writing the chain and the request index too."""

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"
                 ) -> None:
        self.audit_key = AuditKey.from_environment()
        self.in_transaction: list[InTransaction] = []
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
        ids = super()._insert_events(c, stored_events, **kwargs)
        if ids is None or not stored_events:
            return ids
        # after the insert: this transaction holds SQLite's write lock
        c.execute(f"SELECT notification_id, global_hash FROM {CHAIN_TABLE} "
                  "ORDER BY notification_id DESC LIMIT 1")
        row = c.fetchone()
        head = (int(row[0]), bytes(row[1])) if row is not None else None
        previous: dict[str, bytes] = {}
        for oid in {oid_text(e.originator_id) for e in stored_events}:
            c.execute(f"SELECT server_hash FROM {CHAIN_TABLE} WHERE originator_id=? "
                      "ORDER BY originator_version DESC LIMIT 1", (oid,))
            found = c.fetchone()
            if found is not None:
                previous[oid] = bytes(found[0])
        links = _links(self.audit_key.secret, stored_events, ids, head, previous)
        c.executemany(f"INSERT INTO {CHAIN_TABLE} VALUES (?,?,?,?,?)",
                      [(x.notification_id, x.originator_id, x.version, x.server_hash,
                        x.global_hash) for x in links])
        indexed = [(x.notification_id, x.indexed[0], x.originator_id, x.version,
                    _sqlite_time(x.indexed[1])) for x in links if x.indexed is not None]
        if indexed:
            c.executemany(f"INSERT INTO {REQUESTS_TABLE} VALUES (?,?,?,?,?)", indexed)
        if self.in_transaction:
            rows = _written(stored_events, ids)
            for callback in self.in_transaction:
                callback(c, rows)
        return ids

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
        self._local = threading.local()
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
            "originator_version, server_hash, global_hash) VALUES (%s, %s, %s, %s, %s)"
        ).format(**fmt)
        self._sql_insert_request: Composed = SQL(
            "INSERT INTO {schema}.{requests} (notification_id, request_id, originator_id, "
            "originator_version, event_time) VALUES (%s, %s, %s, %s, %s)").format(**fmt)
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
        self._sql_max_chain: Composed = SQL(
            "SELECT MAX(notification_id) AS m FROM {schema}.{chain}").format(**fmt)
        self._sql_indexed: Composed = SQL(
            "SELECT COUNT(*) AS n FROM {schema}.{requests} WHERE originator_id = %s"
        ).format(**fmt)

    def _db_oid(self, originator_id: UUID | str) -> UUID | str:
        if self.datastore.originator_id_type == "uuid" and not isinstance(originator_id, UUID):
            return UUID(str(originator_id))
        return originator_id

    def _insert_stored_events(self, curs: Cursor[DictRow],
                              stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        # As the library's (lock, notify, insert), with the read of the chain's head
        # queued in the same pipeline right after the EXCLUSIVE lock: no extra round trip.
        self._lock_table(curs)
        self._notify_channel(curs)
        previous = curs.connection.cursor()
        oids = sorted({oid_text(e.originator_id) for e in stored_events})
        previous.execute(self._sql_previous, ([self._db_oid(o) for o in oids],),
                         prepare=True)
        self._local.previous = previous
        PostgresAggregateRecorder._insert_stored_events(self, curs, stored_events, **kwargs)

    def _fetch_ids_after_insert_events(self, curs: Cursor[DictRow],
                                       stored_events: Sequence[StoredEvent], **kwargs: Any
                                       ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        reader: Cursor[DictRow] | None = self._local.__dict__.pop("previous", None)
        if ids is None or not stored_events or reader is None:
            return ids
        # still in the insert's transaction, holding its EXCLUSIVE lock on the events
        head: tuple[int, bytes] | None = None
        previous: dict[str, bytes] = {}
        rows = reader.fetchall()
        reader.close()
        for row in rows:
            if row["kind"] == "g":
                head = (int(row["notification_id"]), bytes(row["hash"]))
            else:
                previous[oid_text(row["originator_id"])] = bytes(row["hash"])
        links = _links(self.audit_key.secret, stored_events, ids, head, previous)
        curs.executemany(self._sql_insert_chain, [
            (x.notification_id, self._db_oid(x.originator_id), x.version, x.server_hash,
             x.global_hash) for x in links])
        indexed = [(x.notification_id, x.indexed[0], self._db_oid(x.originator_id),
                    x.version, x.indexed[1]) for x in links if x.indexed is not None]
        if indexed:
            curs.executemany(self._sql_insert_request, indexed)
        if self.in_transaction:
            written = _written(stored_events, ids)
            for callback in self.in_transaction:
                callback(curs, written)
        return ids

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
