"""Reading the log for the read models: pages of stored events as raw rows
(:func:`read_page`), the rows other processes wrote that a command's own transaction
has not folded yet (:func:`read_missed`, under the log's write lock: :func:`lock_log`),
and decoding rows into the domain events a view wants (:class:`EventDecoder`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, PersistenceError, find_id_convertor
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import resolve_topic

#: a row of the log as read: (notification id, originator id, originator version,
#: topic, stored state)
Row = tuple[int, Any, int, str, bytes]

#: at most this many events written by other processes are folded in a command's own
#: transaction (before its events); a longer gap is left to catch-up
MISSED_LIMIT = 100


def read_missed(recorder: Any, curs: Any, after: int, before: int,
                most: int = MISSED_LIMIT) -> list[Row] | None:
    """The log's rows with ``after`` < notification id < ``before``, read on ``curs`` (in
    the insert's transaction, which holds the log's write lock: every such row is
    committed and no other can appear), or None when there are more than ``most``."""
    limit = most + 1
    if isinstance(recorder, SQLiteApplicationRecorder):
        curs.execute(f"SELECT rowid, originator_id, originator_version, topic, state "
                     f"FROM {recorder.events_table_name} WHERE rowid>? AND rowid<? "
                     f"ORDER BY rowid LIMIT ?", [after, before, limit])
        rows = [(int(r[0]), recorder.convert_originator_id(r[1]), int(r[2]), str(r[3]),
                 bytes(r[4])) for r in curs.fetchall()]
    elif isinstance(recorder, PostgresApplicationRecorder):
        from psycopg.sql import SQL, Identifier

        datastore = recorder.datastore
        curs.execute(SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {0}.{1} WHERE notification_id>%s AND notification_id<%s "
            "ORDER BY notification_id LIMIT %s").format(
                Identifier(datastore.schema), Identifier(recorder.events_table_name)),
            [after, before, limit], prepare=True)
        rows = [(int(r["notification_id"]), r["originator_id"], int(r["originator_version"]),
                 str(r["topic"]), bytes(r["state"])) for r in curs.fetchall()]
    else:
        return None
    return None if len(rows) > most else rows


def lock_log(recorder: Any, curs: Any) -> None:
    """Hold the log's write lock in the transaction of ``curs`` (SQLite: a writing
    transaction holds it already; PostgreSQL: the lock the library's inserts take)."""
    if isinstance(recorder, PostgresApplicationRecorder):
        from psycopg.sql import SQL, Identifier

        curs.execute(SQL("LOCK TABLE {0}.{1} IN EXCLUSIVE MODE").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)))


def read_page(recorder: Any, start: int, limit: int,
              originators: dict[Any, UUID | str] | None = None) -> list[Row]:
    """The rows of ``recorder.select_notifications(start=start, limit=limit,
    inclusive_of_start=False)``, as :data:`Row` tuples.

    For the library's SQLite and PostgreSQL recorders (when a subclass does not change
    ``select_notifications``) the same rows are read as plain tuples and each distinct
    originator id is converted once (``originators`` memoises the conversions across
    calls) instead of once per event: a third of the cost of reading. Any error is left
    to the library's own method (and its retries).
    """
    ids: dict[Any, UUID | str] = {} if originators is None else originators
    method = type(recorder).select_notifications
    try:
        if (isinstance(recorder, SQLiteApplicationRecorder)
                and method is SQLiteApplicationRecorder.select_notifications):
            return _read_sqlite(recorder, start, limit, ids)
        if (isinstance(recorder, PostgresApplicationRecorder)
                and method is PostgresApplicationRecorder.select_notifications):
            return _read_postgres(recorder, start, limit, ids)
    except PersistenceError:
        pass
    page: Sequence[Notification] = recorder.select_notifications(
        start=start, limit=limit, inclusive_of_start=False)
    return [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in page]


def _read_sqlite(recorder: SQLiteApplicationRecorder, start: int, limit: int,
                 ids: dict[Any, UUID | str]) -> list[Row]:
    statement = (f"SELECT rowid, originator_id, originator_version, topic, state "
                 f"FROM {recorder.events_table_name} WHERE rowid>? ORDER BY rowid LIMIT ?")
    with recorder.datastore.get_connection(commit=False) as conn, conn.cursor() as curs:
        # one statement: its own read transaction in autocommit mode
        curs.execute(statement, [start, limit])
        rows = curs.fetchall()
    convert = recorder.convert_originator_id
    page: list[Row] = []
    append = page.append
    for notification_id, originator_id, version, topic, state in rows:
        oid = ids.get(originator_id)
        if oid is None:
            oid = ids[originator_id] = convert(originator_id)
        append((notification_id, oid, version, topic, state))
    return page


def _read_postgres(recorder: PostgresApplicationRecorder, start: int, limit: int,
                   ids: dict[Any, UUID | str]) -> list[Row]:
    from psycopg.rows import tuple_row
    from psycopg.sql import SQL, Identifier

    datastore = recorder.datastore
    as_uuid = datastore.originator_id_type == "uuid"
    statement = SQL(
        "SELECT notification_id, originator_id{cast}, originator_version, topic, state "
        "FROM {schema}.{table} WHERE notification_id>%s ORDER BY notification_id LIMIT %s"
    ).format(cast=SQL("::text" if as_uuid else ""), schema=Identifier(datastore.schema),
             table=Identifier(recorder.events_table_name))
    with datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
        # binary results: bytea arrives as bytes, not hex text to parse
        curs.execute(statement, [start, limit], prepare=True, binary=True)
        rows = curs.fetchall()
    page: list[Row] = []
    append = page.append
    for notification_id, originator_id, version, topic, state in rows:
        oid = ids.get(originator_id)
        if oid is None:
            oid = ids[originator_id] = UUID(originator_id) if as_uuid else originator_id
        append((notification_id, oid, version, topic, bytes(state)))
    return page


class EventDecoder:
    """Domain events from log rows, exactly as ``mapper.to_domain_event`` makes them.

    Without a cipher or compressor the mapper's steps are done here once per topic
    instead of once per event (resolving the topic, finding the id converter, the
    class version); the state is decoded by the mapper's own transcoder and upcast by
    the class's own methods. Rows whose topic ``wanted`` refuses are skipped unread.
    With a cipher or compressor, or when the transcoder fails, the mapper does it all
    (and raises its own errors).
    """

    def __init__(self, mapper: Any, wanted: Callable[[str], bool] | None = None) -> None:
        self.mapper = mapper
        self.wanted = wanted
        self.plain = (getattr(mapper, "cipher", None) is None
                      and getattr(mapper, "compressor", None) is None)
        self._topics: dict[tuple[str, type], tuple[type, Callable[[Any], Any], int] | None] = {}

    def _entry(self, topic: str, id_type: type) -> tuple[type, Callable[[Any], Any], int] | None:
        key = (topic, id_type)
        if key in self._topics:
            return self._topics[key]
        entry: tuple[type, Callable[[Any], Any], int] | None = None
        if self.wanted is None or self.wanted(topic):
            cls = resolve_topic(topic)
            entry = (cls, find_id_convertor(cls, id_type), getattr(cls, "class_version", 1))
        self._topics[key] = entry
        return entry

    def __call__(self, rows: Sequence[Row]) -> list[Any]:
        decode = self.mapper.transcoder.decode
        topics = self._topics
        events: list[Any] = []
        append = events.append
        new = object.__new__
        set_dict = object.__setattr__
        for notification_id, oid, version, topic, state in rows:
            key = (topic, type(oid))
            entry = topics[key] if key in topics else self._entry(topic, type(oid))
            if entry is None:
                continue
            if not self.plain:
                append(self._by_mapper(notification_id, oid, version, topic, state))
                continue
            try:
                event_state = decode(state)
            except Exception:
                append(self._by_mapper(notification_id, oid, version, topic, state))
                continue
            cls, convert, class_version = entry
            event_state["originator_id"] = convert(oid)
            event_state["originator_version"] = version
            from_version = event_state.pop("class_version", 1)
            while from_version < class_version:
                getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
                from_version += 1
            event: Any = new(cls)
            set_dict(event, "__dict__", event_state)
            append(event)
        return events

    def _by_mapper(self, notification_id: int, oid: Any, version: int, topic: str,
                   state: bytes) -> Any:
        return self.mapper.to_domain_event(Notification(
            id=notification_id, originator_id=oid, originator_version=version, topic=topic,
            state=state))


__all__ = ["MISSED_LIMIT", "EventDecoder", "Row", "lock_log", "more_than_one_connection",
           "read_missed", "read_page"]


def more_than_one_connection(owner: Any) -> bool:
    """Whether the pool of ``owner``'s datastore (a recorder's, or the view's: they
    share it) gives more than one connection at a time (psycopg's pool, or the
    library's SQLite pool): only then can a thread read or write beside the fold."""
    pool = getattr(getattr(owner, "datastore", None), "pool", None)
    most = getattr(pool, "max_size", None)
    if most is None:
        most = getattr(pool, "pool_size", 1) + getattr(pool, "max_overflow", 0)
    return int(most) > 1


class Pages:
    """The log's pages after a position, one after the other (:meth:`next`). With
    ``ahead``, on PostgreSQL with a pool of more than one connection, a thread reads up
    to that many pages ahead: the database selects and sends the next page while this
    process folds the last one (a rebuild: reading is a third of it, most of that
    waiting for the server). Elsewhere each page is read when asked for."""

    def __init__(self, recorder: Any, size: int, after: int, *, ahead: int = 0) -> None:
        self.recorder = recorder
        self.size = size
        self.after = after
        # originator ids converted once, not once per event (read_page's memo)
        self.originators: dict[Any, UUID | str] = {}
        self.ahead = ahead if (isinstance(recorder, PostgresApplicationRecorder)
                               and more_than_one_connection(recorder)) else 0
        self._queue: queue.Queue[list[Row] | BaseException] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, after: int) -> list[Row]:
        if len(self.originators) > 100_000:
            self.originators.clear()
        return read_page(self.recorder, after, self.size, self.originators)

    def next(self) -> list[Row]:
        """The page after the last one returned (empty at the end of the log)."""
        if not self.ahead:
            page = self._read(self.after)
        else:
            if self._thread is None:
                self._start()
            assert self._queue is not None
            found = self._queue.get()
            if isinstance(found, BaseException):
                self.close()
                raise found
            page = found
        if page:
            self.after = page[-1][0]
        return page

    def seek(self, after: int) -> None:
        """Read from ``after`` on (another process folded the pages before it)."""
        self.close()
        self.after = after

    def _start(self) -> None:
        self._stop = stop = threading.Event()
        pages: queue.Queue[list[Row] | BaseException] = queue.Queue(maxsize=self.ahead)
        self._queue = pages
        after = self.after

        def put(item: list[Row] | BaseException) -> bool:
            while not stop.is_set():
                try:
                    pages.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            position = after
            try:
                while not stop.is_set():
                    page = self._read(position)
                    if not put(page) or len(page) < self.size:
                        return  # the end of the log when it was read
                    position = page[-1][0]
            except BaseException as error:  # handed to the fold, which raises it
                put(error)

        self._thread = threading.Thread(target=run, name="vmledger-rebuild-read",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reading ahead (the pages read and not returned are dropped)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        self._queue = None
