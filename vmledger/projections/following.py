"""Following the log: the read models kept up to date with what every process writes,
and this host's agent woken when another process gave it work.

PostgreSQL: ``LISTEN`` on the log's channel, so events written by any process are
folded within milliseconds (the poll interval is only the fallback). SQLite: the log is
polled.

The agent of ``host`` is woken (``on_change``), after a catch-up, when another process
may have given it work: on PostgreSQL, when a notification's payload names ``host``
(:mod:`vmledger.domain.wakeups`; a payload that names no hosts, from an earlier
release, counts as naming every host); else (SQLite, or a wait that ended without
notification) when the view moved past where this process's own folds left it, or the
catch-up folded events itself: the view is shared, and another process's command is
often folded by that process first. This process's own commands wake its agent
themselves (on PostgreSQL, their notifications are told by the server process of the
connection that sent them, and wake nobody). Without ``host``, it is woken whenever the
view moved.

A notification whose payload says the write was folded into the serving layout in its
own transaction needs no catch-up, nor one of this process's own writes while one of
its passes defers their fold (the agent's steps: the pass folds them before it ends):
when every notification received since the last one is such, none is run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from vmledger.domain.service import StoreRepository
from vmledger.domain.wakeups import folded_into, hosts_of, wakes, written_of

if TYPE_CHECKING:
    from vmledger.projections.runner import ViewUpdater

log = logging.getLogger(__name__)

#: seconds: how often a follower waiting for the log's notifications checks whether
#: it was asked to stop (closing an engine waits for it)
STOP_CHECK = 0.25


class LogFollower:
    """Follows the log for one :class:`~vmledger.projections.runner.ViewUpdater` (see
    the module)."""

    def __init__(self, updater: ViewUpdater, on_change: Callable[[], None] | None,
                 host: str | None) -> None:
        self.updater = updater
        self.on_change = on_change
        self.host = host
        self._seen = updater.view.position()

    def run(self, stop: threading.Event, poll: float) -> None:
        """Until ``stop`` is set; a failure is logged and the following starts again."""
        recorder = self.updater.app.recorder
        channel = getattr(recorder, "channel_name", None)
        datastore = getattr(recorder, "datastore", None)
        while not stop.is_set():
            try:
                if channel is not None and datastore is not None:
                    self._listen(datastore, channel, stop, poll)
                else:
                    self.check(None, False)
                    stop.wait(poll)
            except Exception:
                log.exception("following the log failed; retrying")
                stop.wait(1.0)

    def check(self, wake: bool | None, folded: bool) -> None:
        """Catch up (unless ``folded``: the writes announced were folded already),
        then wake the agent when told to (True), or, when not told (None), if the view
        moved on since the last time, past this process's own folds."""
        updater = self.updater
        updater.refresh()  # a switch of the serving layout made by another process
        read = 0 if folded else updater.catch_up()
        if wake is None:
            position = updater.view.position()
            moved, self._seen = position != self._seen, position
            wake = moved and (self.host is None or read > 0
                              or position > updater.own_position())
        if wake and self.on_change is not None:
            self.on_change()

    def _listen(self, datastore: Any, channel: str, stop: threading.Event,
                poll: float) -> None:
        import psycopg
        from psycopg import sql

        host = self.host
        # this process's writes: their commands woke its agent themselves (the agent's
        # own steps must not wake it again)
        own: set[int] = getattr(self.updater.app.recorder, "own_backends", set())
        with psycopg.connect(**_connect_args(datastore), autocommit=True) as conn, \
                contextlib.ExitStack() as listening:
            conn.execute(sql.SQL("LISTEN {0}").format(sql.Identifier(channel)))
            if self.updater.view.noticed is not None:
                # what was written while nobody listened is not known: every cached
                # copy is read again before a command decides on it
                self.updater.view.noticed(None)
            listening.enter_context(_naming_writes(self.updater.app.repository))
            wake: bool | None = None  # first: whatever moved while not listening
            folded = False
            while not stop.is_set():
                self.check(wake, folded)
                # waited for in slices, so that a stop is seen within one
                deadline = time.monotonic() + poll
                notes: list[Any] = []
                while not notes and not stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    notes = list(conn.notifies(timeout=min(left, STOP_CHECK),
                                               stop_after=1))
                noticed = self.updater.view.noticed
                if noticed is not None:
                    # what the other processes wrote: this process's cached copies of
                    # older versions are read again before a command decides on them
                    for note in notes:
                        if note.pid not in own:
                            noticed(written_of(note.payload))
                if not notes or host is None:
                    wake = None
                else:
                    wake = any(wakes(hosts_of(note.payload), host) for note in notes
                               if note.pid not in own)
                layout = self.updater.view.layout.name
                # nothing to catch up for writes folded in their transaction, nor for
                # this process's writes while one of its passes defers their fold (the
                # pass folds them before it ends; another thread's command whose fold
                # failed just then is folded by the next command or the next poll)
                deferring = self.updater.command_fold.deferring()
                folded = bool(notes) and all(
                    layout in folded_into(note.payload)
                    or (deferring and note.pid in own) for note in notes)


@contextlib.contextmanager
def _naming_writes(repository: object) -> Iterator[None]:
    """While the follower listens, the notifications name what the other processes
    write: a lost race on a copy taken unread is not held against the server
    (:attr:`~vmledger.domain.service.StoreRepository.told_of_writes`)."""
    told = repository if (isinstance(repository, StoreRepository)
                          and repository.latest is not None) else None
    if told is not None:
        told.told_of_writes = True
    try:
        yield
    finally:
        if told is not None:
            told.told_of_writes = False


def _connect_args(datastore: Any) -> dict[str, Any]:
    """Connection parameters of the library's PostgreSQL pool, for one extra connection."""
    kwargs: dict[str, Any] = getattr(datastore.pool, "kwargs", {}) or {}
    return {k: v for k, v in kwargs.items()
            if k in ("dbname", "host", "port", "user", "password") and v is not None}
