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
from collections.abc import Callable
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError

from vmledger.projections.servers import ServersView, decode

log = logging.getLogger(__name__)

PAGE_SIZE = 1000


class ViewUpdater:
    def __init__(self, app: Application[Any], view: ServersView, *, page_size: int = PAGE_SIZE
                 ) -> None:
        self.app = app
        self.view = view
        self.page_size = page_size
        self._lock = threading.Lock()

    def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Apply every event not yet in the view; return how many were read."""
        read = 0
        with self._lock:
            start = self.view.position()
            while True:
                page = self.app.recorder.select_notifications(
                    start=start, limit=self.page_size, inclusive_of_start=False)
                if not page:
                    return read
                try:
                    self.view.apply_page(decode(page, self.app.mapper), page[-1].id,
                                         page)
                except IntegrityError:
                    # another process applied this page first: continue from its position
                    start = self.view.position()
                    continue
                read += len(page)
                start = page[-1].id
                if progress is not None:
                    progress(read, start)

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


def _connect_args(datastore: Any) -> dict[str, Any]:
    """Connection parameters of the library's PostgreSQL pool, for one extra connection."""
    kwargs: dict[str, Any] = getattr(datastore.pool, "kwargs", {}) or {}
    return {k: v for k, v in kwargs.items()
            if k in ("dbname", "host", "port", "user", "password") and v is not None}
