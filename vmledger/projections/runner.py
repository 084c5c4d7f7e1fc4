"""Keeps read models up to date with the event log.

:class:`ViewUpdater` reads the notification log in large pages and folds each page into
the view in one transaction with its tracking position. The same loop serves catch-up
at start-up, live following (called after every local command, and by a poller for
events written by other processes) and a full rebuild.

Read-your-writes: :meth:`ViewUpdater.ensure` makes sure the view has reached a command's
log position before the caller reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Notification, PersistenceError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder

from vmledger.projections.servers import Page, ServersView, decode

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
#: when the log is further ahead than a page, up to this many events (whole pages) are
#: folded in one transaction: one commit and one load and write of each touched row
#: instead of one per page
BATCH_EVENTS = 10_000


class ViewUpdater:
    def __init__(self, app: Application[Any], view: ServersView, *, page_size: int = PAGE_SIZE,
                 batch_events: int = BATCH_EVENTS) -> None:
        self.app = app
        self.view = view
        self.page_size = page_size
        self.batch_events = max(batch_events, page_size)
        self._lock = threading.Lock()

    def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Apply every event not yet in the view; return how many were read.

        The log is read in pages of ``page_size``; the pages read while catching up a
        backlog are folded together, up to ``batch_events`` events per transaction,
        each page still applied exactly once with its own tracking record.
        """
        read = 0
        with self._lock:
            start = self.view.position()
            # originator ids converted once per catch-up, not once per event
            originators: dict[Any, UUID | str] = {}
            while True:
                pages: list[Page] = []
                size = 0
                after = start
                at_end = False
                while size < self.batch_events:
                    page = read_page(self.app.recorder, after, self.page_size, originators)
                    if not page:
                        at_end = True
                        break
                    pages.append((decode(page, self.app.mapper, self.view.wants),
                                  page[-1].id, page))
                    size += len(page)
                    after = page[-1].id
                    if len(page) < self.page_size:
                        at_end = True  # the end of the log when it was read
                        break
                if not pages:
                    return read
                try:
                    self.view.apply_pages(pages)
                except IntegrityError:
                    # another process applied a page first: continue from its position
                    start = self.view.position()
                    continue
                for _, position, notifications in pages:
                    read += len(notifications)
                    if progress is not None:
                        progress(read, position)
                if at_end:
                    return read  # events written since are folded by the next call
                start = after
                if len(originators) > 100_000:
                    originators.clear()

    def ensure(self, position: int | None, timeout: float = 10.0) -> None:
        """Return once the view reflects the log up to ``position`` (read-your-writes)."""
        if position is None:
            return
        deadline = time.monotonic() + timeout
        while self.view.position() < position:
            self.catch_up()
            if self.view.position() >= position:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the servers view did not reach position {position}")
            time.sleep(0.002)

    def follow(self, stop: threading.Event, on_change: Callable[[], None] | None = None,
               poll: float = 0.2) -> None:
        """Keep the view up to date until ``stop`` is set.

        PostgreSQL: LISTEN on the log's channel, so events written by any process are
        folded within milliseconds (``poll`` is only the fallback). SQLite: poll.
        ``on_change`` is called after each catch-up that read something (to wake the
        host agent early).
        """
        channel = getattr(self.app.recorder, "channel_name", None)
        datastore = getattr(self.app.recorder, "datastore", None)
        while not stop.is_set():
            try:
                if channel is not None and datastore is not None:
                    self._listen(datastore, channel, stop, on_change, poll)
                else:
                    if self.catch_up() and on_change is not None:
                        on_change()
                    stop.wait(poll)
            except Exception:
                log.exception("following the log failed; retrying")
                stop.wait(1.0)

    def _listen(self, datastore: Any, channel: str, stop: threading.Event,
                on_change: Callable[[], None] | None, poll: float) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(**_connect_args(datastore), autocommit=True) as conn:
            conn.execute(sql.SQL("LISTEN {0}").format(sql.Identifier(channel)))
            while not stop.is_set():
                if self.catch_up() and on_change is not None:
                    on_change()
                for _ in conn.notifies(timeout=poll, stop_after=1):
                    pass

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Drop the view's rows and position, then fold the whole log again."""
        with self._lock:
            self.view.clear()
        return self.catch_up(progress)


def read_page(recorder: Any, start: int, limit: int,
              originators: dict[Any, UUID | str] | None = None) -> Sequence[Notification]:
    """``recorder.select_notifications(start=start, limit=limit, inclusive_of_start=False)``.

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
    return page


def _read_sqlite(recorder: SQLiteApplicationRecorder, start: int, limit: int,
                 ids: dict[Any, UUID | str]) -> list[Notification]:
    statement = (f"SELECT rowid, originator_id, originator_version, topic, state "
                 f"FROM {recorder.events_table_name} WHERE rowid>? ORDER BY rowid LIMIT ?")
    with recorder.datastore.transaction(commit=False) as curs:
        curs.execute(statement, [start, limit])
        rows = curs.fetchall()
    convert = recorder.convert_originator_id
    page = []
    for notification_id, originator_id, version, topic, state in rows:
        oid = ids.get(originator_id)
        if oid is None:
            oid = ids[originator_id] = convert(originator_id)
        page.append(Notification(id=notification_id, originator_id=oid,
                                 originator_version=version, topic=topic, state=state))
    return page


def _read_postgres(recorder: PostgresApplicationRecorder, start: int, limit: int,
                   ids: dict[Any, UUID | str]) -> list[Notification]:
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
        curs.execute(statement, [start, limit], prepare=True)
        rows = curs.fetchall()
    page = []
    for notification_id, originator_id, version, topic, state in rows:
        oid = ids.get(originator_id)
        if oid is None:
            oid = ids[originator_id] = UUID(originator_id) if as_uuid else originator_id
        page.append(Notification(id=notification_id, originator_id=oid,
                                 originator_version=version, topic=topic,
                                 state=bytes(state)))
    return page


def _connect_args(datastore: Any) -> dict[str, Any]:
    """Connection parameters of the library's PostgreSQL pool, for one extra connection."""
    kwargs: dict[str, Any] = getattr(datastore.pool, "kwargs", {}) or {}
    return {k: v for k, v in kwargs.items()
            if k in ("dbname", "host", "port", "user", "password") and v is not None}
