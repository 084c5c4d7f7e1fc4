"""The ``servers`` read model: one row per server, built from the event log.

Each row holds the server's document (every field the API and the agent need, as JSON)
plus indexed columns for the queries that must be fast: a project's servers, the work
queue of a host agent (servers with an action in flight), and open resize deadlines.

Rows are folded from events with the events' own ``apply`` methods, so the view can
never disagree with the aggregate about what an event means. A page of events is
written in one transaction together with the tracking position (exactly once); the
same code rebuilds the view from scratch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.utils import resolve_topic

from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server

#: the key of this view's position in the tracking table. A new name when the read
#: models' layout changes: the log is then folded again from the start on first open,
#: every row rewritten (the record under the old name, ``vmledger.servers``, stays)
TRACKING_NAME = "vmledger.views.4"

_COLUMNS = ("id", "project_id", "host", "name", "vm_state", "task_state", "pending_action",
            "pending_request_id", "confirm_deadline", "created_at", "updated_at", "deleted",
            "version", "doc")


_INDEX_NAME = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+) ON ")


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$dt" in obj:
        return datetime.fromisoformat(obj["$dt"])
    return obj


# Documents are stored as compact JSON with sorted keys; a datetime is {"$dt": ISO 8601}.
# Writing: datetimes are swapped for that form (containers holding none are not copied),
# then msgspec encodes. Reading: the standard library's decoder with a hook (faster than
# msgspec plus a walk in Python for these documents).
_DECODER = json.JSONDecoder(object_hook=_decode)
_ENCODER = msgspec.json.Encoder(order="sorted")
_RAW_DECODER = msgspec.json.Decoder()


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _stored(value: Any) -> Any:
    """``value`` with every datetime in it as ``{"$dt": ...}``; containers holding no
    datetime are returned as they are, not copied."""
    pairs: Iterable[tuple[Any, Any]]
    make: Callable[[Any], Any]
    if isinstance(value, dict):
        pairs, make = value.items(), dict
    elif isinstance(value, list | tuple):
        pairs, make = enumerate(value), list
    elif isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    else:
        return value
    copy: Any = None
    for key, item in pairs:
        if type(item) not in _SCALARS:
            new = _stored(item)
            if new is not item:
                if copy is None:
                    copy = make(value)
                copy[key] = new
    return value if copy is None else copy


def dumps(doc: dict[str, Any]) -> str:
    """A document as stored (its datetimes as ``{"$dt": ...}``)."""
    return _ENCODER.encode(_stored(doc)).decode()


def dumps_stored(doc: dict[str, Any]) -> str:
    """A document already in stored form (no datetime objects in it: they would be
    written as plain text)."""
    return _ENCODER.encode(doc).decode()


def loads(text: str) -> dict[str, Any]:
    if not isinstance(text, str) or text.startswith("\ufeff"):
        result: dict[str, Any] = json.loads(text, object_hook=_decode)  # bytes, BOM errors
        return result
    decoded: dict[str, Any] = _DECODER.decode(text)
    return decoded


def loads_stored(text: str | bytes) -> dict[str, Any]:
    """A document in stored form (times stay ``{"$dt": ...}``): for folding further."""
    decoded: dict[str, Any] = _RAW_DECODER.decode(text)
    return decoded


def stored_ts(value: Any) -> str | None:
    """:func:`_ts` of a datetime in stored form (or a datetime, or None)."""
    if type(value) is dict:
        text = value["$dt"]
        # already UTC, years 1000 on (the form every recorded time has): cut, don't parse
        if type(text) is str and text.endswith("+00:00") and text[0] != "0":
            if len(text) == 32 and text[19] == ".":
                return text[:26]
            if len(text) == 25:
                return text[:19] + ".000000"
        return _ts(datetime.fromisoformat(text))
    return _ts(value)


def _ts(value: datetime | None) -> str | None:
    # one fixed-width UTC text form, so text comparison is time comparison on both backends
    if value is None:
        return None
    utc = value.astimezone(UTC)
    if utc.year >= 1000:  # isoformat is strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00", faster
        return utc.isoformat(timespec="microseconds")[:26]
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%f")


def fold(doc: dict[str, Any] | None, event: Any) -> dict[str, Any]:
    """An aggregate's document after ``event`` (a server's, an image's...): the event's
    own ``apply`` on a plain namespace, with id, version and times."""
    target = SimpleNamespace(**(doc or {}))
    event.apply(target)
    result = vars(target)
    result["id"] = str(event.originator_id)
    result["version"] = event.originator_version
    result.setdefault("created_at", event.timestamp)
    result["updated_at"] = event.timestamp
    return result


def row_of(doc: dict[str, Any]) -> tuple[Any, ...]:
    pending = doc.get("pending") or {}
    return (doc["id"], doc.get("project_id"), doc.get("host"), doc.get("name"),
            doc.get("vm_state"), doc.get("task_state"), pending.get("action"),
            pending.get("request_id"), _ts(doc.get("confirm_deadline")),
            _ts(doc["created_at"]), _ts(doc["updated_at"]),
            1 if doc.get("vm_state") == lc.DELETED else 0, doc["version"], dumps(doc))


class MarkerNotFound(LookupError):
    """A list marker (a record's id) that names nothing."""


class _Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ...) -> Any: ...

    def executemany(self, sql: Any, params: Any) -> Any: ...

    def fetchall(self) -> Any: ...


class ViewExtension(Protocol):
    """Another read model written in the same transaction as the servers view.

    All read models share the servers view's tracking position, so a page of the log is
    applied to every one of them exactly once, and a rebuild rebuilds them all.
    ``sql`` turns a statement written with ``?`` placeholders into the backend's dialect.
    """

    def create_statements(self, sql: Callable[[str], str]) -> list[str]: ...

    def batch(self, writer: RowWriter, *, empty: bool) -> ExtensionBatch:
        """The state of one transaction's fold: pages are folded into it one after the
        other, then it writes its rows once (``writer``: the transaction's cursor, the
        dialect, and bulk upserts). ``empty``: the read model has no rows yet (a
        rebuild's first transaction), so nothing needs loading."""
        ...

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None: ...


class ExtensionBatch(Protocol):
    def fold(self, events: Sequence[Any]) -> None:
        """Fold a page: ``events`` are the page's decoded events of the kinds this
        read model declares (its ``event_types``; every kind the view decodes, see
        :meth:`ServersView.wants`, when it declares none), in order; not called for a
        page without any."""
        ...

    def write(self) -> None:
        """Write every row the pages changed."""
        ...

    # optional: ``server_folded(server_id, doc, event)``, called after each server event
    # is folded into its document (``doc``, in the servers view's form), for read models
    # that follow the servers' documents rather than the events alone; and
    # ``preload(server_ids)``, called once per page with the servers first seen in the
    # transaction (when the view is not empty), to load their rows in bulk


class RowWriter:
    """Writes a read model's rows in the view's transaction."""

    #: from this many rows on, PostgreSQL gets them by COPY into a temporary table and
    #: one INSERT ... SELECT (several times faster than a statement per row)
    COPY_ROWS = 200

    def __init__(self, curs: Any, sql: Callable[[str], str], dialect: str) -> None:
        self.curs = curs
        self.sql = sql
        self.dialect = dialect

    def upsert(self, table: str, columns: Sequence[str], key: str | tuple[str, ...],
               rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (values in ``columns`` order), replacing rows with the same
        ``key`` (a column, or several)."""
        if not rows:
            return
        keys = (key,) if isinstance(key, str) else key
        key = ", ".join(keys)
        cols = ", ".join(columns)
        updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in keys)
        if self.dialect == "postgres" and len(rows) >= self.COPY_ROWS:
            from psycopg import sql as pg

            stage = pg.Identifier(f"{table}_stage")
            self.curs.execute(pg.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {0} "
                                     "(LIKE {1}) ON COMMIT DELETE ROWS").format(
                stage, pg.Identifier(table)))
            with self.curs.copy(pg.SQL("COPY {0} ({1}) FROM STDIN").format(
                    stage, pg.SQL(cols))) as copy:
                for row in rows:
                    copy.write_row(row)
            self.curs.execute(pg.SQL(
                f"INSERT INTO {{0}} ({cols}) SELECT {cols} FROM {{1}} "
                f"ON CONFLICT ({key}) DO UPDATE SET {updates}").format(
                pg.Identifier(table), stage))
            self.curs.execute(pg.SQL("TRUNCATE {0}").format(stage))
            return
        marks = ", ".join("?" for _ in columns)
        self.curs.executemany(self.sql(f"INSERT INTO {table} ({cols}) VALUES ({marks}) "
                                       f"ON CONFLICT ({key}) DO UPDATE SET {updates}"), rows)


#: a page of the log as read: its rows and the position of its last row
RawPage = tuple[Sequence[Any], int]
#: decodes a page's rows into the domain events the view wants
Decode = Callable[[Sequence[Any]], list[Any]]


class ServersView:
    """Dialect-neutral queries of the servers view (SQLite and PostgreSQL subclasses)."""

    placeholder = "?"
    table = "vmledger_servers"
    #: the backend's name ("sqlite" or "postgres"), for extensions that need it
    dialect = "sqlite"
    extensions: tuple[ViewExtension, ...] = ()

    def _transaction(self, *, commit: bool) -> Any:  # pragma: no cover - per backend
        raise NotImplementedError

    if TYPE_CHECKING:  # provided by the backend's tracking recorder
        def _insert_tracking(self, curs: Any, tracking: Tracking) -> None: ...

        def max_tracking_id(self, application_name: str) -> int | None: ...

        def create_table(self) -> None: ...

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder).replace("{t}", self.table)

    def wants(self, topic: str) -> bool:
        """Whether a page's events of this topic must be decoded: server events, and the
        event types the extensions declare (``event_types``); everything as soon as one
        extension declares none. Others (idempotency records...) are skipped unread."""
        cache: dict[str, bool] | None = self.__dict__.get("_wanted")
        if cache is None:
            cache = self.__dict__["_wanted"] = {}
        found = cache.get(topic)
        if found is None:
            types: list[type] = [Server.Event]
            for extension in self.extensions:
                declared = getattr(extension, "event_types", None)
                if declared is None:
                    types = [object]
                    break
                types.extend(declared)
            try:
                cls = resolve_topic(topic)
            except Exception:  # unknown topic: decoding raises the library's error
                found = True
            else:  # not a class: decoding raises the library's error too
                found = not isinstance(cls, type) or issubclass(cls, tuple(types))
            cache[topic] = found
        return found

    def create_statements(self) -> list[str]:
        own = [self._sql(
            "CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, project_id TEXT, host TEXT,"
            " name TEXT, vm_state TEXT, task_state TEXT, pending_action TEXT,"
            " pending_request_id TEXT, confirm_deadline TEXT, created_at TEXT,"
            " updated_at TEXT, deleted INTEGER, version INTEGER, doc TEXT)"),
            # list pages: index-only scans in the view's order (newest first), per project
            # and across projects; they replace the older (project_id, created_at) index
            self._sql("DROP INDEX IF EXISTS {t}_project"),
            self._sql("CREATE INDEX IF NOT EXISTS {t}_page ON {t}"
                      " (project_id, deleted, created_at, id, version)"),
            self._sql("CREATE INDEX IF NOT EXISTS {t}_all_page ON {t}"
                      " (deleted, created_at, id, version)"),
            self._sql("CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (host, pending_action)"),
            self._sql("CREATE INDEX IF NOT EXISTS {t}_deadline ON {t} (confirm_deadline)"),
            # the timer's idle shelved and soft-deleted servers (replaces {t}_shelved)
            self._sql("DROP INDEX IF EXISTS {t}_shelved"),
            self._sql("CREATE INDEX IF NOT EXISTS {t}_state_age ON {t} (vm_state, updated_at)"),
        ]
        for extension in self.extensions:
            own.extend(extension.create_statements(self._sql))
        return own

    # --- writing ------------------------------------------------------------------
    def position(self) -> int:
        return self.max_tracking_id(TRACKING_NAME) or 0

    def apply_pages(self, pages: Sequence[RawPage], decode: Decode, *,
                    after: int | None = None) -> int:
        """Fold consecutive pages of the log in one transaction, with a tracking record
        per page (so another process applying one of these pages conflicts), loading
        and writing each row once for all of them. Each page is decoded and folded in
        turn (its events are not kept).

        Returns the number of server rows written. ``IntegrityError`` (a page already
        applied) writes nothing.
        """
        names: dict[Any, str] = {}  # originator id -> its text (str() of a UUID is slow)
        with self._transaction(commit=True) as curs:
            # ``after``: where the caller read from; past the start, rows may exist (a
            # view cleared meanwhile only makes the loads find nothing) and the
            # position need not be read again on this, the live path
            empty = False if after else self._is_empty(curs)
            writer = RowWriter(curs, self._sql, self.dialect)
            batches = [extension.batch(writer, empty=empty) for extension in self.extensions]
            # read models that follow the folded server documents (not only the events)
            followers = [batch.server_folded for batch in batches
                         if hasattr(batch, "server_folded")]
            preloads = [batch.preload for batch in batches if hasattr(batch, "preload")]
            docs: dict[str, dict[str, Any] | None] = {}
            # each server's document is folded in place: the same result as ``fold`` (a
            # fresh namespace per event) without copying the document for every event
            targets: dict[str, SimpleNamespace] = {}
            routes = self._routes()
            for rows, _ in pages:
                events = decode(rows)
                folded: list[tuple[str, Any]] = []
                shares: list[list[Any]] = [[] for _ in batches]
                for event in events:
                    cls = type(event)
                    route = routes.get(cls)
                    if route is None:
                        route = self._route(cls)
                    for index in route[1]:
                        shares[index].append(event)
                    if route[0]:
                        oid = event.originator_id
                        ikey = oid.int if type(oid) is UUID else oid  # see ActionsBatch
                        key = names.get(ikey)
                        if key is None:
                            key = names[ikey] = str(oid)
                        folded.append((key, event))
                unknown = [key for key in dict.fromkeys(key for key, _ in folded)
                           if key not in docs]
                if unknown:
                    loaded = {} if empty else self._load(curs, unknown)
                    for key in unknown:
                        docs[key] = loaded.get(key)
                    if not empty:
                        for preload in preloads:
                            preload(unknown)
                for key, event in folded:
                    target = targets.get(key)
                    version = event.originator_version
                    if target is None:
                        current = docs[key]
                        if current is not None and current["version"] >= version:
                            continue  # already folded (a rebuild overlapping a live update)
                        target = targets[key] = SimpleNamespace(**(current or {}))
                    elif target.version >= version:
                        continue
                    event.apply(target)
                    result = target.__dict__
                    result["id"] = key
                    result["version"] = version
                    if "created_at" not in result:
                        result["created_at"] = event.timestamp
                    result["updated_at"] = event.timestamp
                    for follow in followers:
                        follow(key, result, event)
                for batch, share in zip(batches, shares, strict=True):
                    if share:
                        batch.fold(share)
            changed = [target.__dict__ for target in targets.values()]
            writer.upsert(self.table, _COLUMNS, "id", [row_of(d) for d in changed])
            for batch in batches:
                batch.write()
            for _, position in pages:
                self._insert_tracking(curs, Tracking(TRACKING_NAME, position))
        return len(changed)

    def _routes(self) -> dict[type, tuple[bool, tuple[int, ...]]]:
        """Per event class: whether it is a server's, and which extensions fold it (by
        index): worked out once per class, so a page is dispatched in one pass instead
        of each extension sifting every event."""
        routes: dict[type, tuple[bool, tuple[int, ...]]] | None = self.__dict__.get(
            "_event_routes")
        if routes is None:
            routes = self.__dict__["_event_routes"] = {}
        return routes

    def _route(self, cls: type) -> tuple[bool, tuple[int, ...]]:
        takers = []
        for index, extension in enumerate(self.extensions):
            declared = getattr(extension, "event_types", None)
            if declared is None or issubclass(cls, tuple(declared)):
                takers.append(index)
        route = (issubclass(cls, Server.Event), tuple(takers))
        self._routes()[cls] = route
        return route

    def _is_empty(self, curs: Any) -> bool:
        """Whether the view has no position yet (so no rows: rows are only ever written
        with a tracking record, and cleared with it); read in the transaction."""
        curs.execute(self._position_sql(), [TRACKING_NAME])
        row = curs.fetchone()
        value = None if row is None else (row["n"] if isinstance(row, dict) else row[0])
        return not value

    def _position_sql(self) -> Any:  # pragma: no cover - per backend
        raise NotImplementedError

    def _load(self, curs: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" for _ in chunk)
            curs.execute(self._sql(f"SELECT id, doc FROM {{t}} WHERE id IN ({marks})"), chunk)
            for row in curs.fetchall():
                found[row["id"]] = loads(row["doc"])
        return found

    def clear(self, *, drop_indexes: bool = False) -> None:
        """Forget every row and the position (before a rebuild); with ``drop_indexes``
        the secondary indexes go too (filling tables without them and indexing once at
        the end is cheaper: :meth:`restore_indexes`, which opening the view also does)."""
        with self._transaction(commit=True) as curs:
            curs.execute(self._sql("DELETE FROM {t}"))
            for extension in self.extensions:
                extension.clear(curs, self._sql)
            self._delete_tracking(curs)
            if drop_indexes:
                for name in self._index_names():
                    curs.execute(f"DROP INDEX IF EXISTS {name}")

    def restore_indexes(self) -> None:
        """Create the secondary indexes that are missing."""
        with self._transaction(commit=True) as curs:
            for statement in self.create_statements():
                if statement.startswith("CREATE INDEX"):
                    curs.execute(statement)

    def _index_names(self) -> list[str]:
        names = []
        for statement in self.create_statements():
            match = _INDEX_NAME.match(statement)
            if match is not None:
                names.append(match.group(1))
        return names

    def _delete_tracking(self, curs: Any) -> None:  # pragma: no cover - per backend
        raise NotImplementedError

    # --- reading ------------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._transaction(commit=False) as curs:
            curs.execute(self._sql(sql), list(params))
            return list(curs.fetchall())

    def get(self, server_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT doc FROM {t} WHERE id = ?", [server_id])
        return loads(rows[0]["doc"]) if rows else None

    def servers(self, *, project_id: str | None = None, include_deleted: bool = False,
             limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.iter_servers(project_id=project_id, include_deleted=include_deleted,
                                      limit=limit))

    def iter_servers(self, *, project_id: str | None = None, include_deleted: bool = False,
                     limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Server documents newest first (created_at, then id, descending), decoded only
        as they are consumed: a caller that stops after a page decodes only that page."""
        for row in self.rows(project_id=project_id,
                             deleted="both" if include_deleted else "exclude", limit=limit):
            yield row.doc

    def rows(self, *, project_id: str | None = None, deleted: str = "exclude",
             after: str | None = None, limit: int | None = None, docs: bool = True,
             columns: ColumnFilter | None = None) -> list[StoredServer]:
        """Stored servers newest first (created_at, then id, descending), undecoded.

        ``deleted`` is ``"exclude"``, ``"only"`` or ``"both"``; ``after`` is the id of a
        server (visible in the same scope) the page starts after, as a list marker:
        ``KeyError`` when there is none; ``limit`` caps the rows read. Without ``docs``
        only ids and versions are read (see :meth:`fill`); ``columns`` filters further.
        """
        where, params = self._scope(project_id, deleted)
        if columns is not None:
            more, more_params = columns.sql()
            where += more
            params += more_params
        if after is not None:
            # the marker is looked for where the page would be, deleted servers included
            # unless they are excluded (as Nova's marker lookup)
            marker_where, marker_params = self._scope(
                project_id, "exclude" if deleted == "exclude" else "both")
            found = self._query(
                "SELECT created_at, id FROM {t} WHERE "
                + " AND ".join([*marker_where, "id = ?"]), [*marker_params, after])
            if not found:
                raise KeyError(after)
            created = found[0]["created_at"]
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [created, created, after]
        sql = "SELECT id, version, doc FROM {t}" if docs else "SELECT id, version FROM {t}"
        patterns = columns.patterns if columns is not None else ()
        if patterns:  # the page is what the patterns keep: no LIMIT in SQL
            sql = "SELECT id, version{doc}{more} FROM {{t}}".format(
                doc=", doc" if docs else "",
                more="".join(f", {c} AS p_{c}" for c in dict.fromkeys(c for c, _ in patterns)))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None and not patterns:
            sql += f" LIMIT {int(limit)}"
        if not patterns:
            return self._stored(self._query(sql, params))
        assert columns is not None
        kept: list[StoredServer] = []
        for row in self._query(sql, params):
            if all(pattern.search(row[f"p_{column}"] or "") is not None
                   for column, pattern in patterns):
                kept.append(StoredServer(row["id"], row["version"],
                                         row["doc"] if docs else None))
                if limit is not None and len(kept) >= limit:
                    break
        return kept

    def sort_columns(self, *, project_id: str | None = None, deleted: str = "exclude"
                     ) -> list[dict[str, Any]]:
        """Every server in scope as its indexed columns (id, version, name, project_id,
        vm_state, task_state, host, created_at and updated_at as fixed-width UTC text,
        deleted): enough to sort a list page without decoding documents. Newest first."""
        where, params = self._scope(project_id, deleted)
        sql = ("SELECT id, version, name, project_id, vm_state, task_state, host, created_at,"
               " updated_at, deleted FROM {t}")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        return [dict(row) for row in self._query(sql, params)]

    @staticmethod
    def _stored(found: list[Any]) -> list[StoredServer]:
        if not found:
            return []
        if isinstance(found[0], dict):  # PostgreSQL's rows are dicts
            return [StoredServer(r["id"], r["version"], r.get("doc")) for r in found]
        if len(found[0]) == 3:  # sqlite3.Row, by index
            return [StoredServer(r[0], r[1], r[2]) for r in found]
        return [StoredServer(r[0], r[1], None) for r in found]

    def fill(self, rows: Sequence[StoredServer]) -> None:
        """Read the documents of rows read without them, each with the version it has
        now (which may be newer than the row's). A row whose server is no longer in the
        view keeps no document (``loaded`` is false)."""
        by_id = {row.id: row for row in rows}
        for chunk in _chunks(list(by_id), 500):
            marks = ",".join("?" for _ in chunk)
            for found in self._stored(self._query(
                    f"SELECT id, version, doc FROM {{t}} WHERE id IN ({marks})", chunk)):
                row = by_id[found.id]
                row.version, row.text, row._doc = found.version, found.text, None

    @staticmethod
    def _scope(project_id: str | None, deleted: str) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if project_id is not None:
            where.append("project_id = ?")
            params.append(project_id)
        if deleted == "exclude":
            where.append("deleted = 0")
        elif deleted == "only":
            where.append("deleted = 1")
        elif deleted != "both":
            raise ValueError(f"deleted must be exclude, only or both, not {deleted!r}")
        return where, params

    def in_flight(self, host: str | None = None) -> list[tuple[str, str]]:
        """(server id, request id) of every action in flight, on one host or all."""
        sql = "SELECT id, pending_request_id FROM {t} WHERE pending_action IS NOT NULL"
        params: list[Any] = []
        if host is not None:
            sql += " AND host = ?"
            params.append(host)
        sql += " ORDER BY updated_at, id"
        return [(r["id"], r["pending_request_id"]) for r in self._query(sql, params)]

    def idle_on_host(self, host: str) -> list[dict[str, Any]]:
        """Documents of the servers on ``host`` with no action in flight (not deleted)."""
        return [loads(r["doc"]) for r in self._query(
            "SELECT doc FROM {t} WHERE host = ? AND pending_action IS NULL AND deleted = 0"
            " ORDER BY id", [host])]

    def project_usage(self, project_id: str) -> dict[str, int]:
        """A project's servers that are not deleted: how many, and their flavors' vCPUs
        and RAM (Nova's legacy quota counting), summed by the database. A server being
        resized (from the request until it is confirmed or reverted) counts the larger
        of its two flavors: either may be what it ends with."""
        vcpus, ram = self._largest_flavor("vcpus"), self._largest_flavor("ram")
        row = self._query(
            f"SELECT COUNT(*) AS n, COALESCE(SUM({vcpus}), 0) AS vcpus,"
            f" COALESCE(SUM({ram}), 0) AS ram FROM {{t}}"
            " WHERE project_id = ? AND deleted = 0", [project_id])[0]
        return {"instances": int(row["n"]), "cores": int(row["vcpus"]),
                "ram": int(row["ram"])}

    def _largest_flavor(self, key: str) -> str:
        """SQL for a server's ``key`` (``vcpus``, ``ram``…) of the larger of its flavors
        while a resize is pending or unconfirmed, else of its flavor."""
        paths = ("flavor", "old_flavor", "pending.params.flavor")
        if self.dialect == "postgres":
            return "GREATEST({})".format(", ".join(
                "((doc::jsonb)#>>'{{{}}}')::bigint".format(",".join([*path.split("."), key]))
                for path in paths))
        return "max({})".format(", ".join(
            f"COALESCE(json_extract(doc, '$.{path}.{key}'), 0)" for path in paths))

    def on_host(self, host: str) -> list[dict[str, Any]]:
        """Documents of the servers placed on ``host`` (not deleted), by id."""
        return [loads(r["doc"]) for r in self._query(
            "SELECT doc FROM {t} WHERE host = ? AND deleted = 0 ORDER BY id", [host])]

    def due_deadlines(self, now: datetime, limit: int = 100) -> list[tuple[str, datetime]]:
        """Open resize confirmations whose deadline is at or before ``now``, oldest first."""
        rows = self._query(
            "SELECT id, doc FROM {t} WHERE confirm_deadline IS NOT NULL AND confirm_deadline <= ?"
            f" ORDER BY confirm_deadline, id LIMIT {int(limit)}", [_ts(now)])
        out = []
        for r in rows:
            deadline = loads(r["doc"]).get("confirm_deadline")
            if deadline is not None:
                out.append((r["id"], deadline))
        return out

    def idle_since(self, vm_state: str, before: datetime, limit: int = 100) -> list[str]:
        """Servers in ``vm_state`` with no task, unchanged since ``before``, longest
        waiting first: the timer's candidates (shelved to offload, soft-deleted to
        reclaim)."""
        rows = self._query(
            "SELECT id FROM {t} WHERE vm_state = ? AND task_state IS NULL AND updated_at <= ?"
            f" ORDER BY updated_at, id LIMIT {int(limit)}", [vm_state, _ts(before)])
        return [r["id"] for r in rows]

    def alive_between(self, start: datetime, end: datetime, *, project_id: str | None = None,
                      after: tuple[str, str] | None = None, limit: int = 500
                      ) -> list[StoredServer]:
        """Servers that may have run between ``start`` and ``end``, deleted ones included,
        by project then id (after ``after``, a (project, id) pair): those created before
        ``end`` and not deleted by ``start``. A superset: a server's own launch and
        termination times (in its document) decide."""
        where = ["created_at < ?", "(deleted = 0 OR updated_at > ?)"]
        params: list[Any] = [_ts(end), _ts(start)]
        if project_id is not None:
            where.append("project_id = ?")
            params.append(project_id)
        if after is not None:
            where.append("(project_id > ? OR (project_id = ? AND id > ?))")
            params.extend([after[0], after[0], after[1]])
        return self._stored(self._query(
            f"SELECT id, version, doc FROM {{t}} WHERE {' AND '.join(where)}"
            f" ORDER BY project_id, id LIMIT {int(limit)}", params))

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM {t}")[0]["n"])


#: the columns :class:`ColumnFilter` may compare (by name: they are written into SQL)
FILTER_COLUMNS = frozenset({"id", "name", "project_id", "vm_state", "task_state", "host"})


@dataclass(frozen=True)
class ColumnFilter:
    """List filters the view answers from its columns: (vm_state, task_state) pairs (a
    None task_state: any), ``updated_at`` at or after ``since`` / at or before
    ``before``, columns whose text is one of some values (``equal``; a null column
    reads as ``""``) and columns a regular expression finds something in
    (``patterns``, applied in Python to that column only)."""

    states: set[tuple[str, str | None]] | frozenset[tuple[str, str | None]] | None = None
    since: datetime | None = None
    before: datetime | None = None
    equal: tuple[tuple[str, frozenset[str]], ...] = ()
    patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def __post_init__(self) -> None:
        for column, _ in (*self.equal, *self.patterns):
            if column not in FILTER_COLUMNS:
                raise ValueError(f"not a filterable column: {column!r}")

    def sql(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.states is not None:
            alternatives = []
            for vm_state, task_state in sorted(self.states, key=str):
                if task_state is None:
                    alternatives.append("vm_state = ?")
                    params.append(vm_state)
                else:
                    alternatives.append("(vm_state = ? AND task_state = ?)")
                    params += [vm_state, task_state]
            where.append("(" + " OR ".join(alternatives or ["1 = 0"]) + ")")
        if self.since is not None:
            where.append("updated_at >= ?")
            params.append(_ts(self.since))
        if self.before is not None:
            where.append("updated_at <= ?")
            params.append(_ts(self.before))
        for column, values in self.equal:
            tests = []
            if values:
                tests.append(f"{column} IN ({', '.join('?' for _ in values)})")
                params += sorted(values)
            if "" in values:
                tests.append(f"{column} IS NULL")
            where.append("(" + " OR ".join(tests or ["1 = 0"]) + ")")
        return where, params

    def finds(self, row: Any) -> bool:
        """Whether every pattern finds something in ``row`` (a mapping with the
        pattern columns)."""
        return all(pattern.search(row[column] or "") is not None
                   for column, pattern in self.patterns)

    def keeps(self, row: dict[str, Any]) -> bool:
        """The same test on a row of :meth:`ServersView.sort_columns`."""
        if self.states is not None and not any(
                vm == row["vm_state"] and (task is None or task == row["task_state"])
                for vm, task in self.states):
            return False
        if self.since is not None and row["updated_at"] < _ts(self.since):
            return False
        if self.before is not None and row["updated_at"] > _ts(self.before):
            return False
        if not all((row[column] or "") in values for column, values in self.equal):
            return False
        return self.finds(row)


class StoredServer:
    """A row of the servers view as stored: id, version and the document's JSON, which
    is decoded on first use of :attr:`doc` (a page whose rendering is cached per
    version never decodes it)."""

    __slots__ = ("_doc", "id", "text", "version")

    def __init__(self, server_id: str, version: int, text: str | None,
                 doc: dict[str, Any] | None = None) -> None:
        self.id = server_id
        self.version = version
        self.text = text
        self._doc = doc

    @classmethod
    def of(cls, doc: dict[str, Any]) -> StoredServer:
        """A decoded document, as a row."""
        return cls(doc["id"], doc["version"], None, doc)

    @property
    def loaded(self) -> bool:
        """Whether the document was read (see :meth:`ServersView.fill`)."""
        return self.text is not None or self._doc is not None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            if self.text is None:
                raise LookupError(f"server {self.id}: read without its document")
            self._doc = loads(self.text)
        return self._doc


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class SQLiteServersView(ServersView, SQLiteTrackingRecorder):
    """The servers view in the application's own SQLite database (same writer lock)."""

    def __init__(self, datastore: SQLiteDatastore,
                 extensions: Sequence[ViewExtension] = ()) -> None:
        self.extensions = tuple(extensions)
        SQLiteTrackingRecorder.__init__(self, datastore)

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.create_statements()]

    @contextmanager
    def _transaction(self, *, commit: bool) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as curs:
            if commit:
                # Take the write lock before reading: the library begins transactions
                # DEFERRED, and a read that later upgrades to a write fails at once with
                # "database is locked" (no busy wait) when another process wrote since.
                curs.execute("UPDATE tracking SET notification_id = notification_id "
                             "WHERE application_name = ?", [TRACKING_NAME])
            yield curs

    def _delete_tracking(self, curs: Any) -> None:
        curs.execute("DELETE FROM tracking WHERE application_name = ?", [TRACKING_NAME])

    def _position_sql(self) -> Any:
        return "SELECT MAX(notification_id) AS n FROM tracking WHERE application_name = ?"

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # one statement is its own read transaction in autocommit mode: no BEGIN and
        # ROLLBACK round trips around it (a third of a list page's query time)
        with self.datastore.get_connection(commit=False) as conn, conn.cursor() as curs:
            curs.execute(self._sql(sql), list(params))
            return list(curs.fetchall())


class PostgresServersView(ServersView, PostgresTrackingRecorder):
    """The servers view in the application's PostgreSQL database."""

    placeholder = "%s"
    dialect = "postgres"

    def __init__(self, datastore: PostgresDatastore,
                 extensions: Sequence[ViewExtension] = ()) -> None:
        self.extensions = tuple(extensions)
        PostgresTrackingRecorder.__init__(self, datastore,
                                          tracking_table_name="vmledger_views_tracking")
        from psycopg.sql import SQL

        for statement in self.create_statements():
            self.sql_create_statements.append(SQL(statement))  # type: ignore[arg-type]

    @contextmanager
    def _transaction(self, *, commit: bool) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as curs:
            yield curs

    def _delete_tracking(self, curs: Any) -> None:
        from psycopg.sql import SQL, Identifier

        curs.execute(SQL("DELETE FROM {0}.{1} WHERE application_name = %s").format(
            Identifier(self.datastore.schema), Identifier(self.tracking_table_name)),
            [TRACKING_NAME])

    def _position_sql(self) -> Any:
        from psycopg.sql import SQL, Identifier

        return SQL("SELECT MAX(notification_id) AS n FROM {0}.{1} "
                   "WHERE application_name = %s").format(
            Identifier(self.datastore.schema), Identifier(self.tracking_table_name))
