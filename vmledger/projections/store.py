"""The read models' database: one typed way to query and write the tables beside the
event log, on SQLite and on PostgreSQL, and the one form their documents are stored in.

Every read model lives in the application's own database, next to the events, and is
reached through a :class:`ReadStore`: :meth:`~ReadStore.query` (one statement, its rows),
:meth:`~ReadStore.execute` (one statement in its own transaction),
:meth:`~ReadStore.transaction` (several statements on one cursor) and
:meth:`~ReadStore.sql` (a statement written with ``?`` placeholders, in the backend's
dialect). The servers view is the store of every read model (its SQLite and PostgreSQL
classes are :class:`SQLiteStore` and :class:`PostgresStore`), so the read models' query
functions take the engine's view.

Documents are stored as compact JSON with sorted keys; a datetime is ``{"$dt": ISO
8601}`` (:func:`dumps`, :func:`loads`). Times in indexed columns are fixed-width UTC text
(:func:`time_text`), so text order is time order on both backends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, compress, islice
from operator import is_not
from typing import Any, ClassVar, Protocol

import msgspec
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

#: the name of the read models' layout: the key of their position in the tracking table
#: (they share one) and, through :func:`layout_suffix`, the suffix of their tables. A new
#: name when the layout changes (``vmledger.views.N+1``): the new version is then folded
#: beside the serving one and replaces it once caught up (see
#: :mod:`vmledger.projections.layouts`)
TRACKING_NAME = "vmledger.views.4"

#: the last layout whose tables have no suffix (the earlier ones were folded again in
#: place); every later layout's tables are named with :func:`layout_suffix`
LEGACY_LAYOUT = "vmledger.views.4"
_LEGACY_NUMBER = 4


def layout_suffix(name: str) -> str:
    """The suffix of the tables (and indexes) of the layout called ``name``:
    ``vmledger.views.5`` → ``_v5``; none for the layouts up to :data:`LEGACY_LAYOUT`."""
    prefix, _, last = name.rpartition(".")
    if name == "vmledger.servers" or (prefix == "vmledger.views" and last.isdigit()
                                      and int(last) <= _LEGACY_NUMBER):
        return ""
    return "_v" + re.sub(r"\W", "_", last or name).lower()


@dataclass(frozen=True)
class Layout:
    """A version of the read models' layout: its tracking name and its tables' suffix."""

    name: str
    suffix: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "suffix", layout_suffix(self.name))

    @classmethod
    def current(cls) -> Layout:
        """This release's layout (:data:`TRACKING_NAME`, read when called)."""
        return cls(TRACKING_NAME)


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
#: the same text for a document whose every dict already has its keys in sorted order
#: (:func:`dumps_ordered`): msgspec writes a dict's keys in insertion order
_IN_ORDER_ENCODER = msgspec.json.Encoder()
_RAW_DECODER = msgspec.json.Decoder()


_SCALARS = frozenset({str, int, float, bool, type(None)})

#: the "YYYY-MM-DDT" of each day met (by its ordinal) and two-digit numbers, for
#: :func:`isoformat`
_DAYS: dict[int, str] = {}
_TWO = tuple(f"{n:02d}" for n in range(60))


def _clock(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a UTC time, the day's text made once per day."""
    ordinal = value.toordinal()
    day = _DAYS.get(ordinal)
    if day is None:
        if len(_DAYS) > 100_000:
            _DAYS.clear()
        day = _DAYS[ordinal] = value.isoformat()[:11]
    return f"{day}{_TWO[value.hour]}:{_TWO[value.minute]}:{_TWO[value.second]}"


def isoformat(value: datetime) -> str:
    """``value.isoformat()``, about twice as fast for a UTC time (the time of every
    recorded event; the instance actions store one per event): the day's text is
    made once per day."""
    if value.tzinfo is not UTC:
        return value.isoformat()
    microsecond = value.microsecond
    if microsecond:
        return f"{_clock(value)}.{str(1_000_000 + microsecond)[1:]}+00:00"
    return _clock(value) + "+00:00"


def stamped(value: datetime) -> tuple[dict[str, str], str | None]:
    """A datetime's stored form, ``{"$dt": isoformat(value)}``, and its
    :func:`time_text`, made together (one formatting for both: an instance action's
    row holds each of its times twice)."""
    if value.tzinfo is not UTC or value.year < 1000:
        return {"$dt": isoformat(value)}, time_text(value)
    clock = _clock(value)
    microsecond = value.microsecond
    if microsecond:
        column = f"{clock}.{str(1_000_000 + microsecond)[1:]}"
        return {"$dt": column + "+00:00"}, column
    return {"$dt": clock + "+00:00"}, clock + ".000000"


def stored(value: Any) -> Any:
    """``value`` with every datetime in it as ``{"$dt": ...}``; containers holding no
    datetime are returned as they are, not copied."""
    if type(value) is dict or isinstance(value, dict):  # (a plain dict: no isinstance)
        copied: dict[Any, Any] | None = None
        for key, item in value.items():
            if type(item) not in _SCALARS:
                new = stored(item)
                if new is not item:
                    if copied is None:
                        copied = dict(value)
                    copied[key] = new
        return value if copied is None else copied
    if isinstance(value, datetime):
        return {"$dt": isoformat(value)}
    if not isinstance(value, list | tuple):
        return value
    listed: list[Any] | None = None
    for index, item in enumerate(value):
        if type(item) not in _SCALARS:
            new = stored(item)
            if new is not item:
                if listed is None:
                    listed = list(value)
                listed[index] = new
    return value if listed is None else listed


def dumps(doc: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """A document as stored (its datetimes as ``{"$dt": ...}``). ``base``: a document
    in stored form (:func:`loads_stored`) that ``doc`` was made from, a copy changed
    by assigning its keys: a value still the very object ``base`` holds has no
    datetime in it, and is not walked (the walk cost four times the encoding)."""
    if base is None or len(doc) < len(base):  # (no key of a copy is ever deleted)
        return _ENCODER.encode(stored(doc)).decode()
    copied: dict[str, Any] | None = None
    # the keys whose value is not base's, paired in order (in C: a copy keeps its base's
    # keys in their order, a key added comes after them, and a pair of two keys'
    # values is never the same object: walked), and those added
    for key in chain(compress(doc, map(is_not, doc.values(), base.values())),
                     islice(doc, len(base), None)):
        item = doc[key]
        if type(item) not in _SCALARS:
            new = stored(item)
            if new is not item:
                if copied is None:
                    copied = dict(doc)
                copied[key] = new
    return _ENCODER.encode(doc if copied is None else copied).decode()


def dumps_stored(doc: dict[str, Any]) -> str:
    """A document already in stored form (no datetime objects in it: they would be
    written as plain text)."""
    return _ENCODER.encode(doc).decode()


def dumps_ordered(doc: dict[str, Any]) -> str:
    """:func:`dumps_stored` of a document built with every dict's keys in sorted order
    (the caller's guarantee: the text is the same, without sorting each dict again)."""
    return _IN_ORDER_ENCODER.encode(doc).decode()


def loads(text: str) -> dict[str, Any]:
    """A stored document, its datetimes revived."""
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
    """:func:`time_text` of a datetime in stored form (or a datetime, or None)."""
    if type(value) is dict:
        text = value["$dt"]
        # already UTC, years 1000 on (the form every recorded time has): cut, don't parse
        if type(text) is str and text.endswith("+00:00") and text[0] != "0":
            if len(text) == 32 and text[19] == ".":
                return text[:26]
            if len(text) == 25:
                return text[:19] + ".000000"
        return time_text(datetime.fromisoformat(text))
    return time_text(value)


def time_text(value: datetime | None) -> str | None:
    """A time as indexed columns hold it: one fixed-width UTC text form, so text
    comparison is time comparison on both backends."""
    if value is None:
        return None
    if value.tzinfo is UTC and value.year >= 1000:  # every recorded time: no conversion
        text = isoformat(value)
        return text[:26] if value.microsecond else text[:19] + ".000000"
    utc = value.astimezone(UTC)
    if utc.year >= 1000:  # isoformat is strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00", faster
        return utc.isoformat(timespec="microseconds")[:26]
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%f")


class MarkerNotFound(LookupError):
    """A list marker (a record's id) that names nothing."""


class Row(Protocol):
    """A row as a query returns it: its columns by name (``sqlite3.Row`` or a dict)."""

    def __getitem__(self, column: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


class Cursor(Protocol):
    """A database cursor of either backend, in a transaction."""

    def execute(self, sql: Any, params: Any = ...) -> Any: ...

    def executemany(self, sql: Any, params: Any) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


#: per table, columns and key: an upsert's key list, column list, updates and statement
#: (made once: a command's fold writes a few rows of the same few tables)
_UPSERTS: dict[tuple[str, tuple[str, ...], str | tuple[str, ...]],
               tuple[str, str, str, str]] = {}


class RowWriter:
    """Writes a read model's rows in the view's transaction."""

    #: from this many rows on, PostgreSQL gets them by COPY into a temporary table and
    #: one INSERT ... SELECT (several times faster than a statement per row)
    COPY_ROWS = 200

    def __init__(self, curs: Any, sql: Callable[[str], str], dialect: str, *,
                 bulk: bool = True, fresh: bool = False) -> None:
        self.curs = curs
        self.sql = sql
        self.dialect = dialect
        #: whether COPY may be used (not in a command's pipelined transaction: psycopg's
        #: pipeline mode has no COPY)
        self.bulk = bulk
        #: the tables were emptied in an earlier transaction and nothing was written to
        #: them since (a rebuild's first transaction): on PostgreSQL the rows are copied
        #: straight into them, with no staging table and no conflict to look for (each
        #: upsert writes a key once)
        self.fresh = fresh

    def upsert(self, table: str, columns: Sequence[str], key: str | tuple[str, ...],
               rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (values in ``columns`` order), replacing rows with the same
        ``key`` (a column, or several)."""
        if not rows:
            return
        found = _UPSERTS.get((table, tuple(columns), key))
        if found is None:
            keys = (key,) if isinstance(key, str) else key
            listed, cols = ", ".join(keys), ", ".join(columns)
            updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in keys)
            marks = ", ".join("?" for _ in columns)
            found = _UPSERTS[(table, tuple(columns), key)] = (
                listed, cols, updates, f"INSERT INTO {table} ({cols}) VALUES ({marks}) "
                f"ON CONFLICT ({listed}) DO UPDATE SET {updates}")
        key, cols, updates, statement = found
        if self.dialect == "postgres" and self.bulk and len(rows) >= self.COPY_ROWS:
            from psycopg import sql as pg

            table = self.sql(table)  # the table of the layout written (a bare name)
            if self.fresh:
                with self.curs.copy(pg.SQL("COPY {0} ({1}) FROM STDIN").format(
                        pg.Identifier(table), pg.SQL(cols))) as copy:
                    for row in rows:
                        copy.write_row(row)
                return

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
        queue = getattr(self.curs, "queue_rows", None)
        if queue is not None:  # a command's fold on PostgreSQL (:class:`MergedWrites`)
            queue(self.sql(statement), len(columns), rows)
            return
        self.curs.executemany(self.sql(statement), rows)


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of at most ``size`` (for ``IN (...)`` lists of bounded length)."""
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


class ReadStore:
    """The read models' database: the public interface every read model's queries use.

    Statements are written with ``?`` placeholders (:meth:`sql` turns them into the
    backend's). Rows are read by column name (:class:`Row`).
    """

    placeholder: ClassVar[str] = "?"
    #: the backend's name ("sqlite" or "postgres"), for SQL that differs between them
    dialect: ClassVar[str] = "sqlite"

    def sql(self, text: str) -> str:
        """``text`` (written with ``?`` placeholders) in the backend's dialect."""
        return text.replace("?", self.placeholder)

    def transaction(self, *, commit: bool = True, flushed: bool = True
                    ) -> AbstractContextManager[Cursor]:
        """A cursor in one transaction, committed on leaving (rolled back instead
        without ``commit``, or on an error). It takes statements in the backend's
        dialect: pass them through :meth:`sql`.

        ``flushed=False``: the commit does not wait for the database's log to reach the
        disk (SQLite in WAL mode: ``synchronous=NORMAL`` for this transaction alone;
        PostgreSQL: ``synchronous_commit`` off). Only for a transaction that writes
        nothing but what can be folded again from the event log (a catch-up): both
        databases write their log in order, so a power loss can only take the last such
        transactions with it, never one without those before it, and the next flushed
        commit (any command's) makes it durable too; a fold lost so is folded again,
        its tracking position going back with it."""
        raise NotImplementedError  # pragma: no cover - per backend

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one statement (written with ``?`` placeholders), read in a
        transaction of its own."""
        with self.transaction(commit=False) as curs:
            curs.execute(self.sql(sql), list(params))
            return list(curs.fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement (written with ``?`` placeholders) and commit it."""
        with self.transaction(commit=True) as curs:
            curs.execute(self.sql(sql), list(params))

    def writer(self, curs: Cursor) -> RowWriter:
        """Bulk upserts on ``curs`` (a cursor of :meth:`transaction`)."""
        return RowWriter(curs, self.sql, self.dialect)


class SQLiteStore(ReadStore):
    """The read models in the application's SQLite database (same writer lock)."""

    datastore: SQLiteDatastore

    @contextmanager
    def transaction(self, *, commit: bool = True, flushed: bool = True) -> Iterator[Any]:
        if not commit or flushed or not self.datastore.pool.is_journal_mode_wal:
            # (out of WAL mode NORMAL is not safe from corruption: always flushed)
            with self.datastore.transaction(commit=commit) as curs:
                if commit:
                    _lock_for_writing(curs)
                yield curs
            return
        with self.datastore.get_connection(commit=True) as conn:
            # the level is the connection's, and the connection goes back to the pool
            # for the next command: it is set outside the transaction (SQLite refuses
            # a change inside one) and restored after it
            with conn.cursor() as setting:
                level = int(setting.execute("PRAGMA synchronous").fetchone()[0])
                setting.execute("PRAGMA synchronous = NORMAL")
            try:
                with conn.transaction(commit=True) as curs:
                    _lock_for_writing(curs)
                    yield curs
            finally:
                with conn.cursor() as setting:
                    setting.execute(f"PRAGMA synchronous = {level}")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # one statement is its own read transaction in autocommit mode: no BEGIN and
        # ROLLBACK round trips around it (a third of a list page's query time)
        with self.datastore.get_connection(commit=False) as conn, conn.cursor() as curs:
            curs.execute(self.sql(sql), list(params))
            return list(curs.fetchall())


def _lock_for_writing(curs: Any) -> None:
    """Take SQLite's write lock before reading: the library begins transactions
    DEFERRED, and a read that later upgrades to a write fails at once with "database is
    locked" (no busy wait) when another process wrote since."""
    curs.execute("UPDATE tracking SET notification_id = notification_id "
                 "WHERE application_name = ?", [TRACKING_NAME])


class PostgresStore(ReadStore):
    """The read models in the application's PostgreSQL database."""

    placeholder = "%s"
    dialect = "postgres"
    datastore: PostgresDatastore

    @contextmanager
    def transaction(self, *, commit: bool = True, flushed: bool = True) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as curs:
            if commit and not flushed:
                curs.execute("SET LOCAL synchronous_commit = off")
            yield curs

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # the pool's connections are in autocommit mode: one statement is its own read
        # transaction, without the BEGIN and ROLLBACK round trips a transaction block
        # puts around it (three round trips for a read become one)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.sql(sql), list(params))
            return list(curs.fetchall())
